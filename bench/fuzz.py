"""Coverage-guided fuzzing of every decoder of outside input, with the oracle of tests/test_fuzz.py: each input
either decodes or raises the decoder's typed error; any other exception (or a failed round-trip assertion) is a
finding, recorded with its input, and the run goes on.

Engine: atheris (libFuzzer, coverage-guided over the `sda` and `assistant` code and the parsers they call:
yaml, wave), seeded with one valid input per decoder. Without atheris installed (`pip install atheris`), the same
targets get hypothesis-generated inputs (random bytes and mutations of the seeds) for the same time.

Each target runs in its own subprocess (atheris.Fuzz never returns), for `--seconds` each or `--runs` inputs each.
Per target: inputs tried and findings. The last line printed is one JSON object:
    {"targets": {name: {"inputs": n, "crashes": k}}, "inputs_total": N, "crashes_total": K, "engine": "atheris"}

    python bench/fuzz.py --seconds 20                # every target, 20 s each
    python bench/fuzz.py --runs 5000 --only wav,npz  # a fixed number of inputs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("messages", "envelope_open", "release", "bitmap", "frames", "topics", "crypto", "credentials",
           "coordinator_key", "urls_and_days", "config", "wav", "control", "card", "state", "npz", "broker")
MAX_LEN = 8192
#: What atheris instruments for coverage (modules imported inside instrument_imports whose name starts so).
INSTRUMENTED = ["sda", "assistant", "yaml", "wave"]


# --- the targets: (one input -> None, the exceptions it may raise, seed inputs) ---------------------------------------


def build_target(name: str, work: Path):
    """The target `name`: a function of one input's bytes, the typed errors it may raise, and seed inputs. Imports
    the project here, so atheris can instrument it."""
    return globals()[f"_target_{name}"](work)


K = bytes(range(32))


def _samples() -> dict:
    import numpy as np

    from assistant.learning.release import Release, head_size
    from assistant.learning.validation import Metrics
    from sda.ledger import Receipt
    from sda.protocol.messages import (
        Announce,
        ClerkJob,
        ClerkResult,
        ClerkSnapshot,
        CommitteeMember,
        Participation,
        Registration,
        RegistrySnapshot,
    )
    from sda.services.ledger_api import LedgerRequest, LedgerResponse

    params = np.linspace(-1, 1, head_size(2, 3, 2)).astype("<f4").tobytes()
    return {
        Announce: Announce("agg-1", "coordinator", 1, 2**31 - 1, 2, 1, 4, 1024.0, -4.0, 4.0,
                           (CommitteeMember("clerk-1", K, K, 1), CommitteeMember("clerk-2", K, K, 2)), K, K, 3, K,
                           1, 100.0, 200.0, 2, 3, "skellam", "participants", 1.5, 10, 1),
        Participation: Participation("agg-1", "dev-1", bytes(16), bytes(80)),
        ClerkJob: ClerkJob("agg-1", "clerk-1", K, b"x\x9c\x03\x00", bytes(8)),
        ClerkResult: ClerkResult("agg-1", "clerk-1", K, bytes(56)),
        Registration: Registration("dev-1", "device", K, K),
        RegistrySnapshot: RegistrySnapshot("coordinator", K, 2, 0, 1, (("dev-1", K, K), ("dev-2", K, K))),
        ClerkSnapshot: ClerkSnapshot("coordinator", K, 2, 0, 1, (("clerk-1", K, K, 5, True),)),
        LedgerRequest: LedgerRequest("dev-1", "req-1", "stake", 5),
        LedgerResponse: LedgerResponse("dev-1", "req-1", True, "", 10, 5, (b"receipt",)),
        Receipt: Receipt("dev-1", 1, "mint", "memo", 10, 0, 10, 0, 1000.0, K),
        Release: Release("hey_snips", "coordinator", 2, 2, 3, 2, params, K, 1.0,
                         Metrics(0.5, 0.9, 0.1, 0.01, 0.0, 3, 4), ("round-1",), 1.5, 1e-6, 1000.0),
    }


def _coordinator():
    from sda import crypto

    ident = crypto.Identity.from_bytes(bytes(range(64)))
    return ident, ident.public().sign_key


def _target_messages(work: Path):
    from sda.errors import MessageError
    from sda.protocol.messages import Envelope

    samples = _samples()
    classes = list(samples)

    def one(data: bytes) -> None:
        if not data:
            return
        cls, raw = classes[data[0] % len(classes)], data[1:]
        with contextlib.suppress(MessageError):
            m = cls.decode(raw)
            assert cls.decode(m.encode()) == m, "an accepted message does not round-trip"
        with contextlib.suppress(MessageError):
            env = Envelope.decode(raw)
            assert Envelope.decode(env.encode()) == env, "an accepted envelope does not round-trip"
            env.message_type()

    return one, (), [bytes([i]) + m.encode() for i, m in enumerate(samples.values())]


def _sign(payload: bytes) -> bytes:
    from sda import crypto
    from sda.protocol.messages import Envelope

    ident, _ = _coordinator()
    return Envelope("coordinator", payload, crypto.sign(ident.signing, "coordinator", payload)).encode()


def _target_envelope_open(work: Path):
    from sda.errors import BadSignature, MessageError, UnknownSender
    from sda.ledger import LedgerError, Receipt, verify_receipt
    from sda.protocol.messages import open_signed

    _, key = _coordinator()
    receipt = _samples()[Receipt]

    def one(data: bytes) -> None:
        # First byte odd: the rest is a payload the coordinator signs, so the decoder behind the signature is reached.
        raw = _sign(data[1:]) if data[:1] and data[0] & 1 else data[1:]
        with contextlib.suppress(MessageError, UnknownSender, BadSignature):
            open_signed(raw, Receipt, lambda s: key if s == "coordinator" else None)
        with contextlib.suppress(MessageError, UnknownSender, BadSignature, LedgerError):
            verify_receipt(raw, "coordinator", key, "dev-1")

    return one, (), [b"\x00" + _sign(receipt.encode()), b"\x01" + receipt.encode()]


def _target_release(work: Path):
    import numpy as np

    from assistant.learning.release import Release, ReleaseError, verify_release

    _, key = _coordinator()
    release = _samples()[Release]

    def one(data: bytes) -> None:
        raw = _sign(data[1:]) if data[:1] and data[0] & 1 else data[1:]
        r = verify_release(raw, key, 1, K.hex(), "coordinator", "hey_snips")
        assert np.isfinite(r.head().flat()).all()

    return one, (ReleaseError,), [b"\x00" + _sign(release.encode()), b"\x01" + release.encode()]


def _target_bitmap(work: Path):
    import numpy as np

    from sda.errors import MessageError
    from sda.protocol.snapshot import decode_bitmap, encode_bitmap

    def one(data: bytes) -> None:
        size = 1 + int.from_bytes(data[:2], "big") % 4096
        idx, _ = decode_bitmap(data[2:], size)
        assert len(idx) == 0 or (idx[-1] < size and (np.diff(idx) > 0).all())

    seeds = [struct.pack(">H", n - 1) + encode_bitmap(np.arange(0, n, 3), n) for n in (1, 8, 100, 1000)]
    return one, (MessageError,), seeds


def _target_frames(work: Path):
    from sda.errors import MessageError
    from sda.mqtt.framing import Reassembler, frame, unframe

    def one(data: bytes) -> None:
        r = Reassembler(max_message_bytes=2048, max_partial=4, max_age_s=60, max_per_topic=2, max_total_bytes=4096)
        i, now = 0, 0.0
        while i < len(data):  # length-prefixed frames; the prefix's low bit picks the topic
            n = data[i]
            f, i, now = data[i + 1 : i + 1 + n], i + 1 + n, now + (n & 7)
            with contextlib.suppress(MessageError):
                unframe(f)
            with contextlib.suppress(MessageError):
                out = r.feed("ab"[n & 1], f, now)
                assert out is None or len(out) <= 2048
            assert r.pending <= 4

    payload = bytes(range(256)) * 2
    chunks = frame(payload, 120)
    seed = b"".join(bytes([len(c) & ~1]) + c[: len(c) & ~1] for c in chunks)
    return one, (), [seed, b"\x05\x00abcd"]


def _target_topics(work: Path):
    from sda.mqtt import topics

    def one(data: bytes) -> None:
        p = topics.parse(data.decode("utf-8", "replace"))
        assert p is None or isinstance(p, topics.Parsed)

    seeds = [b"sda/v1/agg/a1/participation/dev-1", b"sda/v1/clerk/c1/job/a1", b"sda/v1/registry_snapshot/3",
             b"sda/v1/model/hey_snips/release", b"sda/v1/device/dev-1/inbox"]
    return one, (), seeds


def _target_crypto(work: Path):
    from sda import crypto
    from sda.errors import CryptoError, DecryptionFailed

    me = crypto.Identity.from_bytes(bytes(range(1, 65)))

    def one(data: bytes) -> None:
        if data[:1] and data[0] & 1:
            with contextlib.suppress(CryptoError):
                crypto.Identity.from_bytes(data[1:])
        else:
            with contextlib.suppress(DecryptionFailed):
                crypto.open_from(me.exchange, data[1:], b"info")

    box = crypto.seal_to(me.public().box_key, b"seed" * 8, b"info")
    return one, (), [b"\x01" + bytes(64), b"\x00" + box]


def _file_target(work: Path, name: str, load, errors: tuple, seeds: list[bytes]):
    path = work / name

    def one(data: bytes) -> None:
        path.write_bytes(data)
        load(path)

    return one, errors, seeds


def _target_credentials(work: Path):
    from sda.errors import SdaError
    from sda.services.keys import Credentials

    seed = (b"party_id: dev-1\nrole: device\nbroker:\n  host: broker.local\n  port: 8883\n  username: dev-1\n"
            b"  password: pw\n  tls_ca: null\n  protocol: auto\ncoordinator:\n  id: coordinator\n"
            b"  sign_key: " + b"00" * 32 + b"\n  box_key: " + b"11" * 32 + b"\n")
    return _file_target(work, "credentials.yaml", Credentials.load, (SdaError,), [seed])


def _target_coordinator_key(work: Path):
    from assistant.errors import AssistantError
    from assistant.learning.device import read_coordinator_key

    seeds = [json.dumps({"sign_key": "ab" * 32}).encode(), b"ab" * 32]
    return _file_target(work, "coordinator.json", lambda p: read_coordinator_key(str(p)), (AssistantError,), seeds)


def _target_urls_and_days(work: Path):
    from assistant.analytics.commands import parse_day as analytics_day
    from assistant.errors import AssistantError
    from sda.errors import SdaError, TransportError
    from sda.mqtt.transport import BrokerConfig
    from sda.services.report import parse_day as report_day

    def one(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        with contextlib.suppress(TransportError):
            b = BrokerConfig.from_url(text)
            assert b.host and 0 < b.port < 65536
        with contextlib.suppress(SdaError):
            report_day(text)
        with contextlib.suppress(AssistantError):
            analytics_day(text)

    return one, (), [b"mqtt://user:pw@broker.local:1883", b"mqtts://[::1]:8883", b"2026-11-26"]


def _target_config(work: Path):
    from assistant.config import ConfigError, parse_config

    seed = (b"audio: {device: mic, input: /tmp/in.wav, realtime: false}\n"
            b"model: {dir: /opt/model, threshold: 0.5, patience: 2, refractory_s: 2.0, pre_roll_s: 1.0}\n"
            b"store: {dir: /var/lib/assistant}\nhermes: {url: 'mqtt://localhost:1883'}\n"
            b"learning: {broker: 'mqtts://b:8883', coordinator_id: coordinator, min_crowd: 10}\nlog: {level: info}\n")
    return parse_config, (ConfigError,), [seed]


def _target_wav(work: Path):
    import io
    import wave

    from assistant.audio import read_audio
    from assistant.errors import AudioError

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(bytes(range(256)) * 2)
    return _file_target(work, "clip.wav", read_audio, (AudioError,), [buf.getvalue()])


def _target_control(work: Path):
    from assistant import control

    class Target:
        def status(self) -> dict:
            return {"model_version": "abc"}

        def capture(self, seconds: float) -> int:
            return 7

        def reload(self) -> str:
            return "abc"

    def one(data: bytes) -> None:
        response = control.answer(data, Target())
        assert isinstance(response["ok"], bool)
        json.dumps(response)

    return one, (), [b'{"cmd": "status"}', b'{"cmd": "capture", "seconds": 5}', b'{"cmd": "reload"}']


def _model_dir(work: Path) -> tuple[Path, bytes]:
    from assistant.kws.backbone import sha256_file

    d = work / "model"
    d.mkdir(exist_ok=True)
    (d / "backbone.onnx").write_bytes(b"backbone")
    (d / "head.npz").write_bytes(b"head")
    card = {"wakeword": "hey_snips", "threshold": 0.5,
            "files": {n: {"sha256": sha256_file(d / n), "bytes": 4} for n in ("backbone.onnx", "head.npz")}}
    return d, json.dumps(card).encode()


def _target_card(work: Path):
    from assistant.errors import ModelError
    from assistant.kws.model import load_model

    d, card = _model_dir(work)

    def one(data: bytes) -> None:
        (d / "card.json").write_bytes(data)
        load_model(d)

    return one, (ModelError,), [card]


def _target_state(work: Path):
    from assistant.errors import ModelError
    from assistant.learning.install import STATE_FILE, ModelVersions

    (work / "versions" / "3").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.symlink("versions/3", work / "current")
    versions = ModelVersions(work)

    def one(data: bytes) -> None:
        (work / STATE_FILE).write_bytes(data)
        installed, highest = versions.installed(), versions.highest_seen()
        assert installed[-1] == 3 and highest >= 3 and all(isinstance(k, int) for k in versions.refused())

    seed = json.dumps({"installed": [1, 3], "refused": {"2": "rolled back"}, "highest_seen": 3}).encode()
    return one, (ModelError,), [seed]


def _target_npz(work: Path):
    import io

    import numpy as np

    from assistant.errors import ModelError
    from assistant.kws.head import Head
    from assistant.learning.errors import LearningError
    from assistant.learning.fedadam import load_state
    from assistant.learning.validation import ValidationSet
    from assistant.learning.verifier import Verifier

    def npz(**arrays) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    h = Head.init(2, 3, 2, np.random.default_rng(0))
    loaders = [
        (Head.load, npz(W1=h.W1, b1=h.b1, w2=h.w2, b2=h.b2, window=2, embed=3)),
        (Verifier.load, npz(format=np.array(1), shape=np.array([2, 3]), mean=np.zeros(6), scale=np.ones(6),
                            weights=np.zeros(6), scalars=np.array([0.1, -1.0, 0.0, 0.0]), counts=np.array([3, 4]))),
        (ValidationSet.load, npz(format=np.array(1), embeddings=np.zeros((6, 3), np.float32), lengths=np.array([3, 3]),
                                 labels=np.array([0, 1], np.int8), window=np.array(2),
                                 backbone_sha256=np.array("ab" * 32), recipe=np.array("r"))),
        (load_state, npz(format=np.array(1), params=np.zeros(4), m=np.zeros(4), v=np.zeros(4), released=np.zeros(4),
                         step=np.array(1), rho=np.array(0.5), released_version=np.array(1), rounds=np.array(["r1"]),
                         pending=np.array(["r1"]), config=np.array([1e-2, 0.9, 0.99, 1e-3]))),
    ]
    path = work / "file.npz"

    def one(data: bytes) -> None:
        if not data:
            return
        path.write_bytes(data[1:])
        loaders[data[0] % len(loaders)][0](path)

    return one, (ModelError, LearningError), [bytes([i]) + raw for i, (_, raw) in enumerate(loaders)]


def _target_broker(work: Path):
    import asyncio

    from sda.mqtt.broker import _GuardedReader, _peek_connect

    loop = asyncio.new_event_loop()

    async def peek(data: bytes):
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await _peek_connect(reader)

    def one(data: bytes) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            got, level = loop.run_until_complete(peek(data))
            assert data.startswith(got) and (level is None or 0 <= level <= 255)
        guard = _GuardedReader(asyncio.StreamReader.__new__(asyncio.StreamReader), None, 64)
        for i in range(0, len(data), 7):
            assert isinstance(guard._accept(data[i : i + 7]), bool)

    return one, (), [b"\x10\x0c\x00\x04MQTT\x04\x02\x00<\x00\x00", b"\x10\x0c\x00\x04MQTT\x05\x02\x00<\x00\x00"]


# --- the child: one target, one engine --------------------------------------------------------------------------------


class _Done(Exception):
    """The hypothesis engine's time is up."""


class Recorder:
    """Counts inputs and keeps findings (one per exception type and place), written to `out` as JSON."""

    def __init__(self, out: Path, findings: Path, name: str):
        self.out, self.findings, self.name = out, findings, name
        self.inputs, self.crashes, self.kinds, self._written = 0, 0, {}, 0.0

    def run(self, one, allowed: tuple, data: bytes) -> None:
        self.inputs += 1
        try:
            one(data)
        except allowed:
            pass
        except Exception as exc:  # the oracle: any other exception is a finding (kept, and the run goes on)
            self.crashes += 1
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            kind = f"{type(exc).__name__} at {Path(tb.filename).name}:{tb.lineno}"
            if kind not in self.kinds:
                path = self.findings / f"{self.name}-{len(self.kinds)}.bin"
                path.write_bytes(data)
                self.kinds[kind] = {"message": str(exc)[:200], "input": str(path)}
                self.save()
        if time.monotonic() - self._written > 1.0:
            self.save()

    def save(self) -> None:
        self._written = time.monotonic()
        self.out.write_text(json.dumps({"inputs": self.inputs, "crashes": self.crashes, "findings": self.kinds}))


def child(args: argparse.Namespace) -> None:
    logging.disable(logging.CRITICAL)  # refusals log warnings by design; thousands of them say nothing here
    warnings.simplefilter("ignore")
    work = Path(args.work or tempfile.mkdtemp(prefix=f"fuzz-{args.child}-"))
    rec = Recorder(Path(args.result), Path(args.findings), args.child)
    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=INSTRUMENTED):
            one, allowed, seeds = build_target(args.child, work)
        corpus = work / "corpus"
        corpus.mkdir()
        for i, s in enumerate(seeds):
            (corpus / f"seed-{i}").write_bytes(s)
        limit = f"-runs={args.runs}" if args.runs else f"-max_total_time={args.seconds}"
        flags = [limit, "-print_final_stats=1", f"-max_len={MAX_LEN}", "-timeout=10", "-rss_limit_mb=2048",
                 "-seed=1", str(corpus)]
        atheris.Setup([sys.argv[0], *flags], lambda data: rec.run(one, allowed, data))
        rec.save()
        atheris.Fuzz()  # exits the process when the time or the runs are used up
        return
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    one, allowed, seeds = build_target(args.child, work)
    end = time.monotonic() + (args.seconds if not args.runs else 1e9)

    @st.composite
    def mutated(draw, raw: bytes) -> bytes:
        b = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(b)))
            op = draw(st.integers(0, 3))
            if op == 0 and b:
                b[min(pos, len(b) - 1)] = draw(st.integers(0, 255))
            elif op == 1:
                b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
            elif op == 2:
                del b[pos : pos + draw(st.integers(1, 8))]
            else:
                del b[pos:]
        return bytes(b)

    @settings(max_examples=args.runs or 10**9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=512) | st.sampled_from(seeds).flatmap(mutated))
    def fuzz(data: bytes) -> None:
        if time.monotonic() > end:
            raise _Done
        rec.run(one, allowed, data)

    with contextlib.suppress(_Done):
        fuzz()
    rec.save()


# --- the parent: every target in its own process ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="fuzzing time per target (default 30)")
    ap.add_argument("--runs", type=int, default=0, help="a fixed number of inputs per target instead of a time")
    ap.add_argument("--only", default="", help="comma-separated targets (default: all of them)")
    ap.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    ap.add_argument("--findings", default="", help="folder for the inputs of findings (default: a temp folder)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.engine == "auto":
        args.engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    if args.child:
        child(args)
        return 0
    names = [n for n in args.only.split(",") if n] or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        ap.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    findings = Path(args.findings or tempfile.mkdtemp(prefix="fuzz-findings-"))
    findings.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        result = findings / f"{name}.json"
        result.unlink(missing_ok=True)
        work = tempfile.mkdtemp(prefix=f"fuzz-{name}-")  # the target's files and libFuzzer's corpus
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result),
               "--engine", args.engine, "--seconds", str(args.seconds), "--runs", str(args.runs),
               "--findings", str(findings), "--work", work]
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False,
                                  timeout=None if args.runs else args.seconds + 300)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        took = time.monotonic() - started
        got = json.loads(result.read_text()) if result.exists() else {"inputs": 0, "crashes": 0, "findings": {}}
        executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
        inputs = max(got["inputs"], int(executed[-1]) if executed else 0)
        error = None
        if proc.returncode != 0:  # the child itself died: libFuzzer's own crash report, or an import error
            error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]
        results[name] = {"inputs": inputs, "crashes": got["crashes"] + (1 if error else 0)}
        print(f"{name}: {inputs} inputs in {took:.0f} s, {results[name]['crashes']} crashes", flush=True)
        for kind, f in got["findings"].items():
            print(f"  finding {kind}: {f['message']} (input in {f['input']})", flush=True)
        if error:
            print(f"  the target process failed (exit {proc.returncode}): {error}", flush=True)
    if not any(r["crashes"] for r in results.values()) and not args.findings:
        shutil.rmtree(findings, ignore_errors=True)  # nothing found: only the per-target counts were kept there
    print(json.dumps({"targets": results, "inputs_total": sum(r["inputs"] for r in results.values()),
                      "crashes_total": sum(r["crashes"] for r in results.values()), "engine": args.engine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
