"""Ours (sda) against Flower's SecAgg+ for one round of the wake-word head's update.

d is the head's size (models/hey_snips/head.npz: W1, b1, w2, b2 = 32,833 parameters). For each
device count (100 and 1,000 by default) 5% of the devices drop out, and each side is measured in
one process, without a network, in CPU seconds (time.process_time):

ours    sda's protocol objects, as in sda/simulation.py. Committee of n clerks (default
        min(80, max(3, devices // 4)); k, t from sda.simulation.default_thresholds(n)); 5% of the
        devices do not participate and 5% of the clerks send no result.
        device_cpu_s  mean Participant.participate() (cold: pairwise keys derived);
        upload_bytes  the signed Participation envelope;
        clerk_cpu_s   mean Clerk.handle_job() (a clerk is another device);
        server_cpu_s  Server.accept() of every participation + snapshot() + jobs() + every
                      clerk's handle_job() + Recipient.add_result()/reveal().
flower  flwr's SecAgg+ code path: the client side is flwr's own stage functions in
        flwr.client.mod.secure_aggregation.secaggplus_mod (_setup, _share_keys,
        _collect_masked_vectors, _unmask) run on a SecAggPlusState; the server side is the body of
        flwr.server.workflow.secure_aggregation.SecAggPlusWorkflow's four stages (neighbour ring,
        ciphertext forwarding, masked-vector sum, unmask) re-run here without its Grid, with flwr's
        own functions (bytes_to_ndarray, parameters_addition/_subtraction/_mod, combine_shares,
        generate_shared_key, pseudo_rand_gen, factor_extract, dequantize). num_shares is n made odd
        (capped at the device count) and reconstruction_threshold r = k + t, the same dropout
        margin as ours. 5% of the devices drop after share keys, before sending their masked
        vector: the case that makes the server rebuild their pairwise masks.
        device_cpu_s  mean over surviving devices of the four stages;
        upload_bytes  the four replies' ConfigRecords as protobuf (flwr.common.serde);
        server_cpu_s  the four stages' server-side work.
ratios are ours / flower. The last line printed is one JSON object keyed by setting.

flwr cannot be installed beside this project (flwr 1.42.0 pins typer<0.21, amqtt 0.12 needs typer>=0.24), so
the Flower side runs as a subprocess, `<python> bench/vs_flower.py --side flower ...`, in a venv this script
makes on first use with pip from PyPI (FLOWER_REQUIREMENTS) and caches in bench/.cache; ours runs in this
process. The Flower side imports neither sda nor assistant, and measures itself as before.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # moderate CPU; process_time counts every thread
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Only numpy and the standard library at the top: `--side flower` runs in the Flower venv below, which has
# neither sda nor assistant. Ours' imports are in run_ours and main_both.

ROOT = Path(__file__).resolve().parents[1]
HEAD = ROOT / "models" / "hey_snips" / "head.npz"
CLIP = 1.0
SCALE = 2.0**16

# flwr 1.42.0 pins typer<0.21 and amqtt 0.12 (a core dependency) needs typer>=0.24, so flwr cannot be in the
# project's environment. The Flower side runs in a venv of its own, made once and cached here.
FLWR_VERSION = "1.42.0"
FLOWER_REQUIREMENTS = (f"flwr=={FLWR_VERSION}", "numpy==2.4.6", "cryptography==50.0.2", "pycryptodome==3.24.1",
                       "protobuf==6.33.6")  # the packages the measured code path runs on
FLOWER_VENV = ROOT / "bench" / ".cache" / f"venv-flwr-{FLWR_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
FLOWER_MARKER = "vs_flower-complete.txt"  # written last: its content is FLOWER_REQUIREMENTS


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def head_dimension() -> int:
    """The head's size as assistant.kws.head.Head.size counts it (W1, b1, w2 and the scalar b2)."""
    from assistant.kws.head import Head

    return Head.load(HEAD).size


def cpu() -> float:
    return time.process_time()


def committee_size(devices: int) -> int:
    return min(80, max(3, devices // 4))


# --- ours ------------------------------------------------------------------------------------
def run_ours(devices: int, d: int, n: int, dropout: float, seed: int) -> dict:
    from sda import crypto
    from sda.protocol.clerk import Clerk
    from sda.protocol.messages import CommitteeMember
    from sda.protocol.participant import Participant, ParticipantPolicy
    from sda.protocol.recipient import Recipient
    from sda.protocol.registry import Registry, RegistryEntry
    from sda.protocol.server import Server, new_announce
    from sda.simulation import default_thresholds

    k, t = default_thresholds(n)
    rng = np.random.default_rng(seed)
    coordinator, recipient_id = crypto.Identity.generate(), crypto.Identity.generate()
    clerk_ids = [crypto.Identity.generate() for _ in range(n)]
    device_ids = [crypto.Identity.generate() for _ in range(devices)]
    registry = Registry([RegistryEntry(f"device-{i}", ident.public().sign_key, ident.public().box_key)
                         for i, ident in enumerate(device_ids)])
    committee = tuple(CommitteeMember(f"clerk-{i}", c.public().sign_key, c.public().box_key, i + 1)
                      for i, c in enumerate(clerk_ids))
    now = time.time()
    dropped = set(rng.choice(devices, round(dropout * devices), replace=False).tolist())
    live = [i for i in range(devices) if i not in dropped]
    a = new_announce(
        aggregation_id="vs-flower", coordinator_id="coordinator", k=k, t=t, committee=committee,
        recipient_key=recipient_id.public().box_key, registry=registry, dimension=d, scale=SCALE,
        clip_lo=-CLIP, clip_hi=CLIP, participation_deadline=now + 86400, result_deadline=now + 2 * 86400,
        min_participants=min(len(live), 100),
    )
    server = Server(a, registry, recipient=recipient_id)
    policy = ParticipantPolicy(min_participants=a.min_participants)
    true_field = np.zeros(d, np.int64)
    dev_cpu, server_cpu, upload = [], 0.0, 0
    for i in live:
        x = rng.uniform(-CLIP, CLIP, d)
        dev = Participant(f"device-{i}", device_ids[i], policy)
        c0 = cpu()
        out = dev.participate(a, x, now, rng=np.random.default_rng([seed, i]))
        dev_cpu.append(cpu() - c0)
        upload = len(out.envelope)
        y = x * SCALE  # the truth, encoded with the device's own rounding draws
        low = np.floor(y)
        true_field += low.astype(np.int64) + (np.random.default_rng([seed, i]).random(d) < (y - low))
        c0 = cpu()
        server.accept(out.envelope, now)
        server_cpu += cpu() - c0
    c0 = cpu()
    snap = server.snapshot()
    jobs = server.jobs("coordinator", coordinator)
    recipient = Recipient(recipient_id, a, snap.hash, snap.sealed_seeds)
    server_cpu += cpu() - c0
    clerks_dropped = round(dropout * n)
    clerk_cpu = []
    for i, (name, job) in enumerate(jobs[: n - clerks_dropped]):
        clerk = Clerk(name, clerk_ids[i], "coordinator", coordinator.public().sign_key)
        c0 = cpu()
        done = clerk.handle_job(a, job, registry, now)
        clerk_cpu.append(cpu() - c0)
        c0 = cpu()
        recipient.add_result(done.envelope, now)
        server_cpu += cpu() - c0
    c0 = cpu()
    revealed = recipient.reveal()
    server_cpu += cpu() - c0
    return {
        "committee_n": n, "k": k, "t": t, "r": k + t, "participants": len(live), "clerks_dropped": clerks_dropped,
        "device_cpu_s": round(float(np.mean(dev_cpu)), 5),
        "upload_bytes": upload,
        "server_cpu_s": round(server_cpu + sum(clerk_cpu), 4),
        "server_only_cpu_s": round(server_cpu, 4),
        "clerk_cpu_s": round(float(np.mean(clerk_cpu)), 5),
        "clerk_total_cpu_s": round(sum(clerk_cpu), 4),
        "correct": bool(np.array_equal(revealed.field_sum, true_field)),
    }


# --- Flower SecAgg+ ----------------------------------------------------------------------------
def run_flower(devices: int, d: int, num_shares: int, threshold: int, dropout: float, seed: int) -> dict:
    import importlib

    from flwr.common import ConfigRecord, bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.common.serde import config_record_to_proto
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    # The module, not the function of the same name its package exports.
    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    # SecAggPlusWorkflow's defaults
    clipping_range, quantization_range, mod_range, max_weight = 8.0, 4194304, 4294967296, 1000.0

    def wire(res: dict) -> int:
        return config_record_to_proto(ConfigRecord(res)).ByteSize()

    rng = np.random.default_rng(seed)
    random.seed(seed)
    nids = [int(v) for v in rng.choice(2**62, devices, replace=False) + 1]
    dead_after_keys = set(rng.choice(nids, round(dropout * devices), replace=False).tolist())
    xs = {nid: rng.uniform(-CLIP, CLIP, d) for nid in nids}
    dev_cpu = dict.fromkeys(nids, 0.0)
    dev_up = dict.fromkeys(nids, 0)
    server_cpu = 0.0

    # Stage 0, setup: the server's neighbour ring (setup_stage), each client's _setup.
    c0 = cpu()
    shuffled = list(nids)
    random.shuffle(shuffled)
    half = num_shares >> 1
    neighbours = {nid: {shuffled[(i + off) % devices] for off in range(-half, half + 1)}
                  for i, nid in enumerate(shuffled)}
    setup_cfg = {Key.SAMPLE_NUMBER: devices, Key.SHARE_NUMBER: num_shares, Key.THRESHOLD: threshold,
                 Key.CLIPPING_RANGE: clipping_range, Key.TARGET_RANGE: quantization_range,
                 Key.MOD_RANGE: mod_range, Key.MAX_WEIGHT: max_weight}
    server_cpu += cpu() - c0
    states, pks = {}, {}
    for nid in nids:
        st = mod.SecAggPlusState()
        st.nid = nid
        c0 = cpu()
        res = mod._setup(st, dict(setup_cfg))
        dev_cpu[nid] += cpu() - c0
        dev_up[nid] += wire(res)
        states[nid] = st
        pks[nid] = [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]

    # Stage 1, share keys: each client gets its neighbours' keys and returns encrypted shares.
    fwd_ct: dict[int, list[bytes]] = {nid: [] for nid in nids}
    fwd_src: dict[int, list[int]] = {nid: [] for nid in nids}
    for nid in nids:
        c0 = cpu()
        cfg = {str(m): pks[m] for m in neighbours[nid]}
        server_cpu += cpu() - c0
        c0 = cpu()
        res = mod._share_keys(states[nid], cfg)
        dev_cpu[nid] += cpu() - c0
        dev_up[nid] += wire(res)
        c0 = cpu()
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
            fwd_ct[dst].append(ct)
            fwd_src[dst].append(nid)
        server_cpu += cpu() - c0

    # Stage 2, collect masked vectors: the dropped clients never answer.
    active = [nid for nid in nids if nid not in dead_after_keys]
    masked = None
    for nid in active:
        params = ndarrays_to_parameters([xs[nid]])
        c0 = cpu()
        res = mod._collect_masked_vectors(
            states[nid], {Key.CIPHERTEXT_LIST: fwd_ct[nid], Key.SOURCE_LIST: fwd_src[nid]}, 1, params)
        dev_cpu[nid] += cpu() - c0
        dev_up[nid] += wire(res)
        c0 = cpu()
        vec = [bytes_to_ndarray(b) for b in res[Key.MASKED_PARAMETERS]]
        masked = vec if masked is None else parameters_addition(masked, vec)
        server_cpu += cpu() - c0
    c0 = cpu()
    masked = parameters_mod(masked, mod_range)
    server_cpu += cpu() - c0

    # Stage 3, unmask: seed shares of the living, sk1 shares of the dead; the server rebuilds.
    active_set, dead = set(active), set(dead_after_keys)
    collected: dict[int, list[bytes]] = {nid: [] for nid in nids}
    for nid in active:
        cfg = {Key.ACTIVE_NODE_ID_LIST: list(neighbours[nid] & active_set),
               Key.DEAD_NODE_ID_LIST: list(neighbours[nid] & dead)}
        c0 = cpu()
        res = mod._unmask(states[nid], cfg)
        dev_cpu[nid] += cpu() - c0
        dev_up[nid] += wire(res)
        c0 = cpu()
        for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
            collected[owner].append(share)
        server_cpu += cpu() - c0
    c0 = cpu()
    shapes = get_parameters_shape(masked)
    for nid, shares in collected.items():
        if len(shares) < threshold:
            raise RuntimeError(f"flower: {len(shares)} shares for node {nid}, threshold {threshold}")
        secret = combine_shares(shares)
        if nid in active_set:
            masked = parameters_subtraction(masked, pseudo_rand_gen(secret, mod_range, shapes))
        else:
            for other in neighbours[nid] - {nid}:
                key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(pks[other][0]))
                mask = pseudo_rand_gen(key, mod_range, shapes)
                masked = (parameters_addition(masked, mask) if nid > other
                          else parameters_subtraction(masked, mask))
    recon = parameters_mod(masked, mod_range)
    q_total, recon = factor_extract(recon)
    agg = dequantize(recon, clipping_range, quantization_range)
    for vec in agg:
        vec += -(len(active) - 1) * clipping_range
        vec *= quantization_range / q_total
    server_cpu += cpu() - c0
    mean = np.mean([xs[nid] for nid in active], axis=0)
    return {
        "num_shares": num_shares, "reconstruction_threshold": threshold, "participants": len(active),
        "dropped_after_share_keys": len(dead),
        "device_cpu_s": round(float(np.mean([dev_cpu[nid] for nid in active])), 5),
        "upload_bytes": round(float(np.mean([dev_up[nid] for nid in active]))),
        "server_cpu_s": round(server_cpu, 4),
        "correct": bool(np.allclose(agg[0], mean, atol=1e-2)),
    }


TOLERATES = """tolerates:
  dropouts  ours: any number of devices (a device that does not participate is simply not in the
            snapshot) and up to n - r of the n clerks (r = k + t results reconstruct the sum).
            Flower SecAgg+: devices dropping after share keys, as long as every device keeps at least
            reconstruction_threshold of its num_shares neighbours alive to send shares in unmask.
  malicious server  ours: the server only ever holds padded shares (pads known to device and clerk)
            and sealed seeds it cannot open; a committee split to reveal different sets is refused by
            n < 2r - t (sda.protocol.params.check_announce), and Berlekamp-Welch flags wrong clerks.
            Flower SecAgg+ (default SecAggPlusWorkflow): semi-honest server model. There is no
            consistency-check or signature round, so a server that lies about who dropped can ask for
            both a live device's seed shares and its sk1 shares and unmask its individual vector."""


# --- the Flower venv ---------------------------------------------------------------------------
def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def flower_python(venv: Path = FLOWER_VENV) -> Path:
    """The python of a venv holding FLOWER_REQUIREMENTS, made on first use (about a minute, from PyPI).

    It is built in a temporary directory beside `venv` and renamed into place only once pip has finished,
    so an interrupted build leaves nothing that looks complete (a leftover `.tmp-*` directory is removed by
    the next build). The venv is only ever used as `<venv>/bin/python -m ...`, which a rename does not break.
    """
    want = "\n".join(FLOWER_REQUIREMENTS) + "\n"
    marker = venv / FLOWER_MARKER
    if venv_python(venv).exists() and marker.exists() and marker.read_text() == want:
        return venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    for stale in venv.parent.glob(f"{venv.name}.tmp-*"):
        if time.time() - stale.stat().st_mtime > 3600:  # not a build still running in another process
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{venv.name}.tmp-", dir=venv.parent))
    try:
        log(f"[flower venv] creating {venv} (once; cached afterwards): python -m venv")
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, stdout=sys.stderr)
        log(f"[flower venv] pip install {' '.join(FLOWER_REQUIREMENTS)} (from PyPI; about a minute)")
        pip = subprocess.run(
            [str(venv_python(tmp)), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
             "--no-input", *FLOWER_REQUIREMENTS],
            stdout=sys.stderr, stderr=subprocess.STDOUT, check=False,
        )
        if pip.returncode != 0:
            raise SystemExit(
                f"vs_flower: could not install {' '.join(FLOWER_REQUIREMENTS)} from PyPI into a venv for the Flower "
                f"side (pip exit status {pip.returncode}; its output is above). Is https://pypi.org reachable?")
        subprocess.run([str(venv_python(tmp)), "-c", "import flwr.client.mod.secure_aggregation.secaggplus_mod"],
                       check=True)
        (tmp / FLOWER_MARKER).write_text(want)
        if not (marker.exists() and marker.read_text() == want):  # else another process finished first
            if venv.exists():  # a venv of other requirements under the final name
                shutil.rmtree(venv)
            try:
                tmp.rename(venv)
            except OSError:  # another process renamed its own in between
                if not (marker.exists() and marker.read_text() == want):
                    raise
        log(f"[flower venv] ready: {venv}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return venv_python(venv)


def flower_subprocess(devices: int, d: int, shares: int, threshold: int, dropout: float, seed: int) -> dict:
    """run_flower in the Flower venv: `<its python> bench/vs_flower.py --side flower ...`, JSON on the last line."""
    python = flower_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    cmd = [str(python), str(Path(__file__).resolve()), "--side", "flower", "--devices", str(devices),
           "--dimension", str(d), "--shares", str(shares), "--threshold", str(threshold),
           "--dropout", repr(dropout), "--seed", str(seed)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=False)  # stderr: ours
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"vs_flower: the Flower side failed (exit status {proc.returncode}): {' '.join(cmd)}")
    return json.loads(lines[-1])


def main_flower(args: argparse.Namespace) -> int:
    """`--side flower`: one setting, run in the Flower venv; imports neither sda nor assistant."""
    from importlib.metadata import version

    if args.shares is None or args.threshold is None or args.dimension is None:
        raise SystemExit("vs_flower: --side flower needs --dimension, --shares and --threshold")
    log(f"[flower side] flwr {version('flwr')}, numpy {np.__version__}, python {sys.version.split()[0]}")
    w0 = time.perf_counter()
    flower = run_flower(int(args.devices), args.dimension, args.shares, args.threshold, args.dropout, args.seed)
    flower["wall_s"] = round(time.perf_counter() - w0, 2)
    print(json.dumps(flower))
    return 0


def main_both(args: argparse.Namespace) -> int:
    from sda.simulation import default_thresholds

    d = args.dimension or head_dimension()
    flower_python()  # made (or found) before ours runs, so a missing PyPI fails early
    result: dict = {}
    for devices in (int(v) for v in args.devices.split(",")):
        n = args.committee or committee_size(devices)
        k, t = default_thresholds(n)
        shares = min(n | 1, devices)  # Flower warns for an even num_shares below the sample size
        threshold = min(k + t, shares - 1)
        name = f"devices_{devices}"
        log(f"[{name}] d={d}: ours (n={n}, k={k}, t={t})")
        w0 = time.perf_counter()
        ours = run_ours(devices, d, n, args.dropout, args.seed)
        ours["wall_s"] = round(time.perf_counter() - w0, 2)
        log(f"[{name}] ours {ours}")
        log(f"[{name}] flower SecAgg+ (num_shares={shares}, reconstruction_threshold={threshold}), in {FLOWER_VENV}")
        flower = flower_subprocess(devices, d, shares, threshold, args.dropout, args.seed)
        log(f"[{name}] flower {flower}")
        ratios = {key: round(ours[key] / flower[key], 4) for key in ("device_cpu_s", "upload_bytes", "server_cpu_s")}
        result[name] = {"devices": devices, "dimension": d, "dropout": args.dropout,
                        "ours": ours, "flower": flower, "ratios": ratios}
    print(TOLERATES)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="progress on stderr; JSON as the last line")
    parser.add_argument("--devices", default="100,1000", help="comma-separated device counts")
    parser.add_argument("--dimension", type=int, default=None, help="default: the shipped head's size")
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--committee", type=int, default=None, help="ours' n (default min(80, max(3, devices//4)))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=("both", "flower"), default="both",
                        help="flower: internal, run by `both` in the Flower venv (one device count)")
    parser.add_argument("--shares", type=int, default=None, help="--side flower: num_shares")
    parser.add_argument("--threshold", type=int, default=None, help="--side flower: reconstruction_threshold")
    args = parser.parse_args(argv)
    return main_flower(args) if args.side == "flower" else main_both(args)


if __name__ == "__main__":
    sys.exit(main())
