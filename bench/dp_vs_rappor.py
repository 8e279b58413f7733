"""Central DP through private aggregation versus local DP (RAPPOR) on one histogram task (issue 8, part 4).

The claim tested: global DP through our aggregation gives with 1,000 devices the accuracy that RAPPOR needs
~1,000,000 devices for, at the same privacy. Each device holds one of K buckets (default K = 16, a Zipf
distribution p_k ~ 1/(k + 1)); the task is the fraction of devices in each bucket. Error is the RMSE per
bucket of the estimated fractions against the devices' actual fractions, over buckets and trials.

Neighbouring relation, the same on both sides: replace-one (one device's bucket changes to any other).
That is the relation local DP is defined by (any two inputs of one device), and for the sum of one-hot
vectors it gives L1 sensitivity 2 and L2 sensitivity sqrt(2). (The project's ledger uses zero-out, which
for one-hot vectors gives L1 = L2 = 1 and so about half the central variance; replace-one does not
flatter the central side.)

(a) Local DP: one-time basic RAPPOR (Erlingsson, Pihur and Korolova, CCS 2014) with a one-hot, Bloom-free
encoding: K bits, the device's bucket set; each bit is reported as 1 with probability f/2, as 0 with f/2,
and truthfully otherwise (no permanent/instantaneous split: one report per device). So P(1 | bit 1) =
q = 1 - f/2 and P(1 | bit 0) = p = f/2; changing the bucket changes two bits, so
epsilon = 2 ln(q / p) = 2 ln((1 - f/2) / (f/2)), pure epsilon-DP. Unbiased estimator of a bucket's count:
(c - n p) / (q - p), with c the number of reported ones. Chosen over k-ary randomized response because
at K = 16 and epsilon <= 2 its variance is lower (per-bucket variance ~ e^(eps/2) / (e^(eps/2) - 1)^2 / n,
independent of K, against k-RR's (e^eps + K - 2) / (e^eps - 1)^2 / n: 3.9/n against 5.7/n at eps = 1);
optimised unary encoding (Wang et al., USENIX Security 2017) would be ~6% better still, not enough to
change the comparison. Simulated exactly, never device by device: true counts t ~ Multinomial(n, p_k),
then c_k = Binomial(t_k, q) + Binomial(n - t_k, p) (bits are flipped independently).

(b) Central DP through our protocol: the server reveals sum(one-hot) + Skellam noise added by the
clerks exactly as sda.noise does it: each of the n_c committee clerks adds a bounded Skellam share of
variance sigma^2 / (n_c - t) (sda.noise.clerk_noise_share), so the n_c - t clerks that are honest under
the threat model alone provide sigma^2 and the calibration is made on sigma^2; with every clerk honest the
noise released has variance sigma^2 * n_c / (n_c - t) (default n_c = 80, t = 16: x1.25), and the RMSE
measured is that of the noise actually added. sigma^2 is the smallest variance whose Skellam RDP bound
(assistant.learning.privacy.RoundCost.skellam, Agarwal, Kairouz and Liu, NeurIPS 2021), converted by
dp-accounting (privacy.epsilon_of), gives epsilon at delta = 1e-6. (b) is (epsilon, delta)-DP with
delta = 1e-6, (a) is pure epsilon-DP: that asymmetry is part of the comparison. Counts are at scale 1
(one field unit per device).

rappor_n_matching_central_1000: the n at which RAPPOR's RMSE equals central DP's at n = 1,000, from a
least-squares fit of log RMSE on log n over the measured RAPPOR points, then checked by simulating RAPPOR
at that n. --json: progress on stderr, one JSON object as the last stdout line. Seeded: the same
arguments give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from assistant.learning.privacy import DEFAULT_DELTA, RoundCost, epsilon_of
from sda.noise import clerk_noise_share
from sda.simulation import default_thresholds

#: Replace-one sensitivities of a sum of one-hot vectors (see the module doc).
L1_SENSITIVITY = 2.0
L2_SENSITIVITY = math.sqrt(2.0)
DEFAULT_NS = (1_000, 10_000, 100_000, 1_000_000)
DEFAULT_EPSILONS = (0.5, 1.0, 2.0)
CENTRAL_N = 1_000


def zipf_distribution(buckets: int) -> np.ndarray:
    """The skewed true distribution (buckets,) float64: p_k proportional to 1 / (k + 1)."""
    w = 1.0 / np.arange(1, buckets + 1)
    return w / w.sum()


def rappor_probabilities(epsilon: float) -> tuple[float, float]:
    """(p, q) = (P(report 1 | bit 0), P(report 1 | bit 1)) = (f/2, 1 - f/2) with 2 ln(q/p) = epsilon."""
    p = 1.0 / (1.0 + math.exp(epsilon / 2.0))
    return p, 1.0 - p


def rappor_estimates(counts: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """RAPPOR's unbiased frequency estimates (trials, K) float64 for true counts (trials, K) int64 of n devices
    each: the reported-ones counts are drawn exactly, then (c - n p) / (q - p) / n."""
    n = counts.sum(axis=1, keepdims=True)
    p, q = rappor_probabilities(epsilon)
    ones = rng.binomial(counts, q) + rng.binomial(n - counts, p)
    return (ones - n * p) / (q - p) / n


def rappor_variance(n: int, frequency: np.ndarray, epsilon: float) -> np.ndarray:
    """The variance (K,) of RAPPOR's frequency estimates given true frequencies (K,) of n devices."""
    p, q = rappor_probabilities(epsilon)
    return (frequency * q * (1 - q) + (1 - frequency) * p * (1 - p)) / (n * (q - p) ** 2)


def calibrate_variance(epsilon: float, delta: float = DEFAULT_DELTA) -> float:
    """The smallest Skellam variance sigma^2 (field units^2) whose RDP bound gives `epsilon` at `delta` for
    the replace-one sensitivities (bisection on log variance; the bound decreases with the variance)."""
    def eps_at(variance: float) -> float:
        return epsilon_of(RoundCost.skellam(L2_SENSITIVITY, L1_SENSITIVITY, variance).rho, delta)

    lo, hi = 1e-3, 1.0
    while eps_at(hi) > epsilon:
        lo, hi = hi, hi * 2.0
    while hi / lo > 1.0 + 1e-9:
        mid = math.sqrt(lo * hi)
        if eps_at(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def central_estimates(counts: np.ndarray, sigma: float, clerks: int, t: int, rng: np.random.Generator
                      ) -> np.ndarray:
    """Central-DP frequency estimates (trials, K) float64: (counts + the sum of `clerks` clerk noise shares,
    each of variance sigma^2 / (clerks - t)) / n, for true counts (trials, K) int64."""
    trials, K = counts.shape
    shares = clerk_noise_share(clerks * trials * K, sigma, clerks, t, rng).reshape(clerks, trials, K)
    return (counts + shares.sum(axis=0)) / counts.sum(axis=1, keepdims=True)


def rmse(estimates: np.ndarray, counts: np.ndarray) -> float:
    """RMSE per bucket of estimated fractions (trials, K) against the true fractions of counts (trials, K)."""
    truth = counts / counts.sum(axis=1, keepdims=True)
    return float(np.sqrt(np.mean((estimates - truth) ** 2)))


def fit_power_law(ns: list[int], values: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line log(value) = intercept + slope * log(n)."""
    slope, intercept = np.polyfit(np.log(ns), np.log(values), 1)
    return float(intercept), float(slope)


def run(epsilons: tuple[float, ...], ns: tuple[int, ...], buckets: int, trials: int, clerks: int, t: int,
        delta: float, seed: int, log=lambda msg: None) -> dict:
    """The whole measurement as a JSON-ready dict (see the module doc)."""
    rng = np.random.default_rng(seed)
    dist = zipf_distribution(buckets)
    out: dict = {"rmse": {"rappor": {}, "central": {}}, "epsilon": list(epsilons), "delta": delta,
                 "buckets": buckets, "trials": trials, "ns": list(ns), "clerks": clerks, "clerk_threshold_t": t,
                 "distribution": [round(float(x), 6) for x in dist], "noise_variance": {},
                 "noise_variance_released": {}, "rappor_flip_f": {}, "rappor_n_matching_central_1000": {},
                 "rappor_fit": {}, "rappor_n_matching_analytic": {},
                 "rappor_check_at_matching_n": {}, "central_rmse_analytic_1000": {}}
    for eps in epsilons:
        key = f"{eps:g}"
        variance = calibrate_variance(eps, delta)
        released = variance * clerks / (clerks - t)
        sigma = math.sqrt(variance)
        out["noise_variance"][key] = variance
        out["noise_variance_released"][key] = released
        out["rappor_flip_f"][key] = 2.0 * rappor_probabilities(eps)[0]
        out["central_rmse_analytic_1000"][key] = math.sqrt(released) / CENTRAL_N
        rows_r, rows_c = {}, {}
        for n in ns:
            counts = rng.multinomial(n, dist, size=trials)
            rows_r[str(n)] = rmse(rappor_estimates(counts, eps, rng), counts)
            rows_c[str(n)] = rmse(central_estimates(counts, sigma, clerks, t, rng), counts)
            log(f"eps={key} n={n}: rappor {rows_r[str(n)]:.3g}, central {rows_c[str(n)]:.3g}")
        target = rows_c.get(str(CENTRAL_N))
        if target is None:
            counts = rng.multinomial(CENTRAL_N, dist, size=trials)
            target = rmse(central_estimates(counts, sigma, clerks, t, rng), counts)
        intercept, slope = fit_power_law(list(ns), [rows_r[str(n)] for n in ns])
        n_match = math.exp((math.log(target) - intercept) / slope)
        counts = rng.multinomial(round(n_match), dist, size=trials)
        check = rmse(rappor_estimates(counts, eps, rng), counts)
        out["rmse"]["rappor"][key], out["rmse"]["central"][key] = rows_r, rows_c
        out["rappor_n_matching_central_1000"][key] = round(n_match)
        # Analytic cross-check: RAPPOR's mean per-bucket variance * n = released variance / 1000^2 * n.
        per_device = float(np.mean(rappor_variance(1, dist, eps)))
        out["rappor_n_matching_analytic"][key] = round(per_device * CENTRAL_N**2 / released)
        out["rappor_fit"][key] = {"intercept": intercept, "slope": slope, "central_rmse_1000": target}
        out["rappor_check_at_matching_n"][key] = {"rmse": check, "ratio_to_central_1000": check / target}
        log(f"eps={key}: RAPPOR needs n={n_match:,.0f} (slope {slope:.3f}); simulated there: {check:.3g}"
            f" vs central {target:.3g}")
    return out


def plot(result: dict, path: Path) -> None:
    """Log-log RMSE against n, one line per method and epsilon, to a PNG at `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ns = result["ns"]
    for i, key in enumerate(result["rmse"]["rappor"]):
        color = f"C{i}"
        for method, style in (("rappor", "--o"), ("central", "-s")):
            ys = [result["rmse"][method][key][str(n)] for n in ns]
            label = f"{'RAPPOR (local, pure DP)' if method == 'rappor' else 'central Skellam (delta=1e-6)'}, eps={key}"
            ax.plot(ns, ys, style, color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("devices n")
    ax.set_ylabel(f"RMSE per bucket of the estimated fraction (K={result['buckets']})")
    ax.set_title("Histogram accuracy at equal epsilon: local vs central DP")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="progress on stderr, one JSON object as the last stdout line")
    ap.add_argument("--epsilons", type=float, nargs="+", default=list(DEFAULT_EPSILONS), help="per-device epsilon")
    ap.add_argument("--ns", type=int, nargs="+", default=list(DEFAULT_NS), help="numbers of devices")
    ap.add_argument("--buckets", type=int, default=16, help="K, the number of histogram buckets")
    ap.add_argument("--trials", type=int, default=2000, help="trials per (method, epsilon, n)")
    ap.add_argument("--clerks", type=int, default=80, help="committee size n_c (t from sda's default_thresholds)")
    ap.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="delta of the central side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", type=Path, default=Path(__file__).with_suffix(".png"), help="where the plot goes")
    args = ap.parse_args(argv)
    if len(args.ns) < 2:
        ap.error("--ns needs at least two values to fit RAPPOR's curve")
    _, t = default_thresholds(args.clerks)
    t0 = time.perf_counter()
    result = run(tuple(args.epsilons), tuple(sorted(args.ns)), args.buckets, args.trials, args.clerks, t,
                 args.delta, args.seed, log=lambda msg: print(msg, file=sys.stderr))
    plot(result, args.png)
    result["png"] = str(args.png)
    result["runtime_s"] = round(time.perf_counter() - t0, 2)
    if not args.json:
        for key in result["rmse"]["rappor"]:
            print(f"eps={key}: sigma^2={result['noise_variance'][key]:.1f} (released"
                  f" {result['noise_variance_released'][key]:.1f}); RAPPOR matches central n=1000 at"
                  f" n={result['rappor_n_matching_central_1000'][key]:,}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
