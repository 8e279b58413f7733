"""`assistant demo`: the whole private-learning story on one machine (what `make demo` runs).

An MQTT broker (embedded, or --broker), the developer's coordinator (in this process: registry, committees,
learning rounds with FedAdam and the release gate, the daily analytics, the token ledger) and N simulated
devices, each its own process running the real device code (assistant.demo.device), some of whose owners opted
in as clerks. Each device hears a day of synthetic audio in a held-out voice and its owner labels what it saved;
then one analytics round sums a day's usage counters and several learning rounds sum the devices' clipped
gradients, both by secure aggregation with differential-privacy noise added by the clerks. Every revealed sum is
checked against the truth, which only the demo knows (each device also writes what it sent to a file). At the
end: FRR and false accepts per hour before and after on held-out audio, epsilon spent, tokens per clerk, bytes
per role, and PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AssistantError

DEFAULT_OUT = Path("demo-output")


@dataclass(frozen=True)
class DemoOptions:
    """What `assistant demo` runs: devices, learning rounds, clerks among the devices, the broker, the devices'
    epsilon budget for all rounds, and where the plots go."""

    devices: int = 20
    rounds: int = 3
    clerks: int | None = None  # default: 2 devices in 5, at least 3
    broker_url: str | None = None
    epsilon: float = 8.0
    delta: float = 1e-6
    analytics_epsilon: float = 1.0
    out_dir: Path = DEFAULT_OUT
    learning_rate: float = 3e-3  # FedAdam's; bench/fl_sim.py's measured value
    round_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.devices < 4:
            raise AssistantError(f"--devices {self.devices}: need at least 4 (3 clerks and a crowd)")
        if self.rounds < 1:
            raise AssistantError(f"--rounds {self.rounds}: need at least 1")
        if not 3 <= self.committee <= self.devices:
            raise AssistantError(f"--clerks {self.clerks}: need 3 to {self.devices} (the devices)")

    @property
    def committee(self) -> int:
        return self.clerks if self.clerks is not None else max(3, self.devices * 2 // 5)


@dataclass
class SumCheck:
    """A revealed sum against the truth: residual std over the noise std the round announced."""

    aggregation: str
    participants: int
    truth_devices: int
    noise_std: float
    residual_std: float

    @property
    def ratio(self) -> float:
        return self.residual_std / self.noise_std if self.noise_std > 0 else math.inf

    @property
    def ok(self) -> bool:
        # The residual is the clerks' noise alone when the sum is right: its std is the announced one. A wrong
        # sum (a lost or doubled participation) moves it far off for any realistic gradient or counter.
        return self.participants == self.truth_devices and 0.7 <= self.ratio <= 1.3


@dataclass
class DemoSummary:
    """What the demo found (printed at the end; asserted by the tests)."""

    devices: int
    clerk_names: list[str]
    rounds_completed: int = 0
    releases: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    checks: list[SumCheck] = field(default_factory=list)
    analytics: dict = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    bytes_by_role: dict[str, tuple[int, int]] = field(default_factory=dict)
    epsilon_spent: float = 0.0
    before: object = None
    after: object = None
    heard: dict = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    per_round: list[dict] = field(default_factory=list)
    installed: int = 0  # devices running the last release
    release_fates: int = 0  # devices that said what they did with the last release
    seconds: float = 0.0


class Devices:
    """The device processes: commands in on stdin, JSON events out on stdout (assistant.demo.device)."""

    def __init__(self, workdir: Path, broker_url: str, protocol: str, key: bytes, opts: DemoOptions):
        self.events: queue.Queue[dict] = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        for i in range(opts.devices):
            cmd = [sys.executable, "-m", "assistant.demo.device", "--index", str(i), "--workdir", str(workdir),
                   "--broker", broker_url, "--protocol", protocol, "--coordinator-key", key.hex(),
                   "--chunks", str(opts.rounds), "--min-crowd", "2", "--budget", str(opts.epsilon)]
            if i < opts.committee:
                cmd.append("--clerk")
            with open(self.logs / f"dev{i:02d}.log", "wb") as err:
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                     bufsize=1)
            self.procs.append(p)
            threading.Thread(target=self._read, args=(p,), daemon=True).start()

    def _read(self, p: subprocess.Popen) -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def send(self, line: str) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.stdin.write(line + "\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]

    def collect(self, event: str, n: int, timeout_s: float, on_other: Callable[[dict], None]) -> list[dict]:
        """The next `n` events named `event`; others go to `on_other`. AssistantError on timeout or a dead device."""
        got: list[dict] = []
        end = time.monotonic() + timeout_s
        while len(got) < n:
            try:
                e = self.events.get(timeout=0.2)
            except queue.Empty:
                dead = [i for i, p in enumerate(self.procs) if p.poll() not in (None, 0)]
                if dead:
                    log = (self.logs / f"dev{dead[0]:02d}.log").read_text()[-2000:]
                    raise AssistantError(f"device dev{dead[0]:02d} stopped:\n{log}") from None
                if time.monotonic() > end:
                    raise AssistantError(f"waited {timeout_s:g} s for {n} '{event}' events, got {len(got)}") from None
                continue
            (got.append(e) if e.get("event") == event else on_other(e))
        return got

    def stop(self, timeout_s: float = 30.0) -> list[dict]:
        """Quit every device; their byte counts."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write("quit\n")  # type: ignore[union-attr]
                    p.stdin.close()  # type: ignore[union-attr]
                except OSError:
                    pass
        out: list[dict] = []
        with contextlib.suppress(AssistantError):  # a device that died has no byte counts to give
            out = self.collect("bytes", sum(p.poll() is None for p in self.procs), timeout_s, lambda e: None)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return out


def noise_multiplier(epsilon: float, delta: float, rounds: int) -> float:
    """The noise multiplier z (noise std / clip norm) at which `rounds` rounds cost at most `epsilon` at `delta`
    (zCDP of the Gaussian, rho = 1 / (2 z^2) a round; 10 % margin for the Skellam's discreteness)."""
    from ..learning.privacy import rho_of

    rho = rho_of(epsilon, delta) / rounds
    return 1.1 * math.sqrt(1.0 / (2.0 * rho))


def run_demo(opts: DemoOptions, out=sys.stdout) -> DemoSummary:
    """Run the story (see the module doc); the summary. AssistantError when a part cannot start."""
    from sda.mqtt.broker import EmbeddedBroker
    from sda.mqtt.transport import BrokerConfig
    from sda.services.coordinator import Coordinator, CoordinatorConfig

    from ..analytics.coordinate import AnalyticsConfig, analytics_spec, request_day
    from ..kws.backbone import Backbone
    from ..kws.head import Head
    from ..kws.model import default_model_dir, load_model
    from ..learning.coordinate import CoordinatorSetup, learning_rounds
    from ..learning.rounds import LearningRoundConfig
    from ..learning.validation import build, synthetic_clips
    from . import measure, world
    from .device import day_start

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    t_start = time.monotonic()
    world.models_data()  # the checkout and espeak-ng, before anything starts
    tmp = Path(tempfile.mkdtemp(prefix="assistant-demo-"))
    embedded = devices = coordinator = None
    z = noise_multiplier(opts.epsilon, opts.delta, opts.rounds)
    summary = DemoSummary(opts.devices, [f"dev{i:02d}-clerk" for i in range(opts.committee)])
    try:
        if opts.broker_url is None:
            embedded = EmbeddedBroker()
            embedded.start()
            broker, url, protocol = BrokerConfig(port=embedded.port, protocol="3.1.1"), embedded.url, "3.1.1"
            say(f"embedded MQTT broker on {embedded.url}")
        else:
            broker, url, protocol = BrokerConfig.from_url(opts.broker_url), opts.broker_url, "auto"
            say(f"MQTT broker {broker.host}:{broker.port}")
        model_dir = default_model_dir()
        files = load_model(model_dir)
        base = Head.load(files.head)
        threshold = files.threshold if files.threshold is not None else 0.5
        say("synthesising the coordinator's validation set (training voices) ...")
        validation = tmp / "validation.npz"
        build(lambda: synthetic_clips(files.wakeword, 100, 300, seed=11), files.backbone, base.window,
              cache=validation, recipe="demo")
        coordinator = Coordinator(CoordinatorConfig(tmp / "coordinator", broker, grant_stake=100))
        setup = CoordinatorSetup(
            tmp / "coordinator", broker, model_dir, validation, "hey_snips", every_s=1.0, rounds=opts.rounds,
            clip_norm=1.0, learning_rate=opts.learning_rate,
            round_config=LearningRoundConfig(noise_multiplier=z, min_participants=max(2, opts.devices * 3 // 4),
                                             max_participants=opts.devices, collect_s=30.0, results_s=60.0,
                                             noise_mode="clerks", committee_size=opts.committee),
            grant_stake=100)
        rounds = learning_rounds(setup, coordinator)
        coordinator.start()
        key = coordinator.public_keys().sign_key
        say(f"coordinator up; starting {opts.devices} device processes ({opts.committee} of them also clerks),"
            f" each with the shipped model and its own store ...")
        devices = Devices(tmp, url, protocol, key, opts)
        # the held-out evaluation audio, while the devices start
        backbone = Backbone(files.backbone)
        positives, negative = world.evaluation_streams(opts.devices)
        ev_pos = [measure.embed(backbone, s) for s in positives]
        ev_neg = measure.embed(backbone, negative)
        started = devices.collect("started", opts.devices, 180, lambda e: None)
        deadline = time.monotonic() + 60
        while len(coordinator.store.parties()) < opts.devices + opts.committee:
            if time.monotonic() > deadline:
                raise AssistantError(f"only {len(coordinator.store.parties())} of {opts.devices + opts.committee}"
                                     " parties registered within 60 s")
            time.sleep(0.1)
        say(f"{len(started)} devices and {opts.committee} clerks registered with the coordinator")

        fates: dict[tuple[str, int], tuple[str, str]] = {}  # (device, version): (status, reason)

        def other(e: dict) -> None:
            if e.get("event") == "release" and e.get("version") is not None and e.get("status") != "duplicate":
                fates[(e["device"], e["version"])] = (e["status"], e["reason"])

        def hear(chunk: int) -> None:
            devices.send(f"hear {chunk}")
            heard = devices.collect("heard", opts.devices, 300, other)
            tot = {k: sum(h[k] for h in heard) for k in ("wake_words", "heard_wake_words", "detections", "saved",
                                                           "captured")}
            labels = sum(sum(h["labels"].values()) for h in heard)
            summary.heard[chunk] = {**tot, "labels": labels, "seconds": sum(h["seconds"] for h in heard)}
            say(f"day {chunk + 1}: the devices heard {tot['wake_words']} wake words in"
                f" {sum(h['seconds'] for h in heard) / 60:.0f} min of audio and detected {tot['heard_wake_words']}"
                f" ({tot['detections'] - tot['heard_wake_words']} false alarms); owners pressed \"you missed me\""
                f" {tot['captured']} times and labelled {labels} of {tot['saved']} saved moments")

        hear(0)
        # --- one analytics round: the first day's usage counters --------------------------------------------
        day = time.strftime("%Y-%m-%d", time.localtime(day_start(0, opts.rounds)))
        aconfig = AnalyticsConfig(epsilon=opts.analytics_epsilon, delta=opts.delta, committee_size=opts.committee,
                                  min_participants=max(2, opts.devices * 3 // 4), max_participants=opts.devices,
                                  collect_s=20.0, results_s=60.0)
        spec = analytics_spec(day, aconfig)
        request_day(coordinator, day, aconfig)
        say(f"analytics: asked every device for {day}'s counters ({spec.dimension} events, epsilon"
            f" {opts.analytics_epsilon:g} at delta {opts.delta:g}) ...")
        row = wait_aggregation(coordinator, spec.aggregation_id, opts.round_timeout_s, say)
        if row.state == "revealed":
            check, table = check_sum(row, tmp / "sent" / spec.aggregation_id, spec.noise_sigma)
            summary.checks.append(check)
            summary.analytics = {"day": day, "participants": row.result["participants"], "table": table,
                                 "noise_std": spec.noise_sigma}
            say(f"analytics {day}: {row.result['participants']} devices; revealed minus the true sum has std"
                f" {check.residual_std:.1f}, the clerks' noise std is {check.noise_std:.1f} (ratio"
                f" {check.ratio:.2f}: {'the sum is right' if check.ok else 'WRONG'})")
        else:
            say(f"analytics {day}: {row.state}: {row.error}")

        # --- the learning rounds --------------------------------------------------------------------------
        say(f"learning: {opts.rounds} rounds, clip norm 1, noise multiplier {z:.2f} added by the clerks"
            f" ({opts.epsilon:g} epsilon for all rounds at delta {opts.delta:g}); over {base.size:,} parameters the"
            f" noise's norm is about {z * math.sqrt(base.size):.0f}, against at most {opts.devices} for the sum of"
            f" {opts.devices} clipped gradients: a crowd this small learns little (bench/fl_sim.py runs 1,000)")
        for r in range(1, opts.rounds + 1):
            if r > 1:
                hear(r - 1)
            rid = rounds.start_round()
            wait_aggregation(coordinator, rid, opts.round_timeout_s, say)
            outcome = rounds.wait(rid, opts.round_timeout_s)
            info = {"round": r, "participants": outcome.participants, "error": outcome.error,
                    "bytes_in": coordinator.transport.bytes_in, "bytes_out": coordinator.transport.bytes_out}
            if outcome.error is None:
                summary.rounds_completed += 1
                row = coordinator.store.aggregation(rid)
                check, _ = check_sum(row, tmp / "sent" / rid, z * 1.0)
                summary.checks.append(check)
                info["ratio"] = check.ratio
                decision = outcome.decision
                if outcome.release is not None:
                    summary.releases.append(outcome.release.version)
                    say(f"round {r}: {outcome.participants} devices; sum checked (ratio {check.ratio:.2f});"
                        f" release {outcome.release.version} published ({decision.reason if decision else ''})")
                else:
                    summary.refused.append(rid)
                    say(f"round {r}: {outcome.participants} devices; sum checked (ratio {check.ratio:.2f}); no"
                        f" release: {decision.reason if decision else 'refused'}")
            else:
                say(f"round {r}: failed: {outcome.error}")
            summary.per_round.append(info)
        if summary.releases:  # each device checks the last release on its own labels: installed or refused
            last = summary.releases[-1]
            missing = opts.devices - sum(v == last for _, v in fates)
            with contextlib.suppress(AssistantError):
                for e in devices.collect("release", missing, 30, lambda e: None):
                    other(e)
            mine = [f for (_, v), f in fates.items() if v == last]
            summary.installed = sum(status == "installed" for status, _ in mine)
            summary.release_fates = len(mine)
            reasons = sorted({r for status, r in mine if status != "installed"})
            say(f"release {last}: installed on {summary.installed} of {opts.devices} devices"
                + (f"; refused by the others' own labels ({reasons[0]})" if reasons else ""))
        final = rounds.like.with_flat(rounds.state.released)
        summary.before = measure.accuracy(base, ev_pos, ev_neg, threshold)
        summary.after = measure.accuracy(final, ev_pos, ev_neg, threshold)
        summary.epsilon_spent = spent_epsilon(tmp)
        for name in summary.clerk_names:
            summary.tokens[name] = coordinator.ledger.balance(name).available if coordinator.ledger else 0
        stats = devices.stop()
        devices = None
        summary.bytes_by_role = {
            "coordinator": (coordinator.transport.bytes_out, coordinator.transport.bytes_in),
            "device (mean)": (int(np.mean([s["device_out"] for s in stats])) if stats else 0,
                              int(np.mean([s["device_in"] for s in stats])) if stats else 0),
            "clerk (mean)": (int(np.mean([s["clerk_out"] for s in stats if s["clerk_jobs"]] or [0])),
                             int(np.mean([s["clerk_in"] for s in stats if s["clerk_jobs"]] or [0]))),
        }
        summary.plots = plot(summary, opts.out_dir)
        summary.seconds = time.monotonic() - t_start
        render(summary, opts, threshold, say)
        return summary
    finally:
        if devices is not None:
            devices.stop()
        if coordinator is not None:
            coordinator.stop()
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_aggregation(coordinator, agg: str, timeout_s: float, say: Callable[[str], None]):
    """Wait for `agg` to be revealed or failed, printing its progress; its row."""
    end = time.monotonic() + timeout_s
    last = ""
    while True:
        row = coordinator.store.aggregation(agg)
        if row is not None and row.state in ("revealed", "failed"):
            return row
        if row is not None:
            line = (f"  {agg}: {row.state}, {coordinator.store.participation_count(agg)} participations,"
                    f" {len(coordinator.store.results(agg))} clerk results, {coordinator.transport.bytes_in:,} bytes"
                    f" in / {coordinator.transport.bytes_out:,} out at the coordinator")
            if line != last:
                say(line)
                last = line
        if time.monotonic() > end:
            raise AssistantError(f"{agg} not finished within {timeout_s:g} s")
        time.sleep(0.5)


def check_sum(row, sent_dir: Path, sigma: float) -> tuple[SumCheck, list[tuple[int, float, float]]]:
    """The revealed values against the sum of what the devices wrote they sent. Each of the n clerks adds noise of
    variance sigma^2 / (n - t), so that sigma^2 is there even with t of them silent: with m noise shares in the sum
    the noise std is sigma * sqrt(m / (n - t))."""
    n, t = int(row.spec["committee_size"]), int(row.spec["t"])
    noise_std = sigma * math.sqrt(int(row.result.get("noise_participants", n - t)) / (n - t))
    revealed = np.asarray(row.result["values"], np.float64)
    files = sorted(sent_dir.glob("*.npy"))
    truth = np.sum([np.load(f) for f in files], axis=0) if files else np.zeros_like(revealed)
    residual = revealed - truth
    table = [(i, float(truth[i]), float(revealed[i])) for i in range(len(revealed))]
    return SumCheck(row.aggregation_id, int(row.result["participants"]), len(files), noise_std,
                    float(np.std(residual))), table


def spent_epsilon(workdir: Path) -> float:
    """The largest epsilon any device's privacy ledger has spent."""
    from ..learning.privacy import load_ledger
    from ..store import Store

    spent = 0.0
    for root in sorted(workdir.glob("dev*/store")):
        with Store(root) as store:
            spent = max(spent, load_ledger(store).epsilon_spent())
    return spent


def plot(summary: DemoSummary, out_dir: Path) -> list[Path]:
    """Two PNGs: before/after accuracy, and the analytics day revealed against the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if summary.before is not None and summary.after is not None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
        for ax, key, title in ((axes[0], "frr", "false rejection rate"), (axes[1], "fa_per_hour",
                                                                          "false accepts per hour")):
            vals = [getattr(summary.before, key), getattr(summary.after, key)]
            ax.bar(["before", "after"], vals, color=["#999999", "#3b7dd8"])
            ax.set_title(title)
        fig.suptitle(f"held-out audio: {summary.before.wake_words} wake words,"
                     f" {summary.before.negative_hours * 60:.0f} min of speech")
        fig.tight_layout()
        p = out_dir / "demo-accuracy.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    if summary.analytics:
        table = [t for t in summary.analytics["table"] if t[1] > 0] or summary.analytics["table"][:10]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        x = np.arange(len(table))
        ax.bar(x - 0.2, [t[1] for t in table], 0.4, label="true sum")
        ax.bar(x + 0.2, [t[2] for t in table], 0.4, yerr=summary.analytics["noise_std"], label="revealed (±1 std)")
        ax.set_xticks(x, [str(t[0]) for t in table])
        ax.set_xlabel("event index (assistant.analytics.registry)")
        ax.legend()
        ax.set_title(f"analytics {summary.analytics['day']}: {summary.analytics['participants']} devices")
        fig.tight_layout()
        p = out_dir / "demo-analytics.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def render(s: DemoSummary, opts: DemoOptions, threshold: float, say: Callable[[str], None]) -> None:
    """The closing summary."""
    say("")
    say("== summary ==")
    say(f"learning rounds completed: {s.rounds_completed} of {opts.rounds}; releases published:"
        f" {s.releases or 'none'}{f'; refused by the gate: {len(s.refused)}' if s.refused else ''}")
    ok = sum(c.ok for c in s.checks)
    say(f"revealed sums checked against the truth: {ok} of {len(s.checks)} right")
    b, a = s.before, s.after
    say(f"at threshold {threshold:.3f}, on {b.wake_words} held-out wake words and {b.negative_hours * 60:.0f} min of"
        " held-out speech:")
    say(f"  before: FRR {b.frr:.3f}, {b.fa_per_hour:.1f} false accepts per hour ({b.false_accepts})")
    say(f"  after:  FRR {a.frr:.3f}, {a.fa_per_hour:.1f} false accepts per hour ({a.false_accepts})")
    say(f"epsilon spent by the devices: {s.epsilon_spent:.2f} of {opts.epsilon:g} (delta {opts.delta:g})")
    say("tokens earned per clerk: " + ", ".join(f"{k} {v}" for k, v in s.tokens.items()))
    for role, (sent, received) in s.bytes_by_role.items():
        say(f"bytes {role}: {sent:,} sent, {received:,} received")
    for p in s.plots:
        say(f"plot: {p}")
    say(f"took {s.seconds:.0f} s")
