"""Mutation check of the adversarial tests: remove each defence in turn, the test that claims it must fail.

docs/threat-model.md pairs every guarantee with a test. This script proves the pairing mechanically: for
each mutant (a defence, the one textual edit that removes it, the tests that claim it) it copies the code
into a throw-away directory, applies the edit there (never in the checkout), and runs the tests with
PYTHONPATH pointing at the copy, so the test process and every process it spawns (`python -m sda.cli ...`)
import the mutated code (checked once: a grandchild process must import `sda` from the copy).

The mutant is *killed* when a test fails (or hangs) under it, and *survives* when the tests pass: a defence
no test notices. A pytest error (an import, a fixture) is no kill. Every named test is first run unmutated
and must pass, so a kill is not just a broken test. Tests that start a whole deployment can fail under load
for other reasons, so their mutants name the failure the missing defence causes (`expect`, matched against
pytest's E/FAILED lines); another failure is retried (--attempts) and, if it persists, the mutant counts as
not killed ("UNPROVEN" in the log). The edit's `old` text must occur exactly once in its file, so code drift
is reported loudly instead of silently mutating nothing. Progress and reasons go to stderr.

    .venv/bin/python bench/mutants.py                 # every mutant; exit 0 only if all are killed
    .venv/bin/python bench/mutants.py --only NAME     # one mutant (repeatable)
    .venv/bin/python bench/mutants.py --list          # the mutants, their files and tests

The last stdout line is one JSON object:
{"mutants": N, "killed": K, "survived": [names], "results": {name: {"killed": bool, "seconds": s, "test": id}}}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the tests need from the checkout (bench/ holds gigabytes of data and is not copied).
COPIED = ("sda", "assistant", "tui", "tests", "models", "systemd", "docs", "pyproject.toml", "README.md", "Makefile")
IGNORED = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache", "*.pyc", "*.egg-info")
TIMEOUT_S = 600.0

T_PROTOCOL = "tests/test_protocol.py"
T_ADV = "tests/test_adversarial.py"
SPLIT_SET_SERVICES = f"{T_ADV}::test_split_set_and_late_participations_are_refused_by_the_real_services"
SYBIL = f"{T_ADV}::test_a_round_padded_with_sybils_still_hides_the_one_honest_input_behind_the_honest_clerks_noise"
COMMITTEE = "tests/test_committee.py::test_an_honest_committee_verifies_and_every_tampering_is_refused"
RELEASE = "tests/test_release.py::test_tampered_replayed_and_foreign_releases_are_refused"
REASSEMBLER = "tests/test_transport.py::test_reassembler_refuses_oversized_malformed_and_inconsistent_frames"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]
    what: str  # the defence this edit removes
    # For tests that can fail for other reasons (whole deployments under load): text the failing output must
    # contain (any one of them) for the failure to be the one the removed defence causes; others are retried.
    expect: tuple[str, ...] = ()


MUTANTS: tuple[Mutant, ...] = (
    Mutant("split_set_service", "sda/services/clerk.py",
           "            if job.snapshot_hash != bytes(done[0]):\n",
           "            if False:  # mutant\n",
           (SPLIT_SET_SERVICES,),
           "a clerk service refuses a processed aggregation's job for another snapshot hash",
           expect=("every clerk to refuse the second set",)),
    Mutant("split_set_core", "sda/protocol/clerk.py",
           "        if a.aggregation_id in self.processed:\n",
           "        if False:  # mutant\n",
           (f"{T_PROTOCOL}::test_split_set_attack_is_stopped_by_honest_clerks",),
           "a clerk processes an aggregation once (AlreadyProcessed)"),
    Mutant("committee_size_rule", "sda/protocol/params.py",
           "    if not n < 2 * r - t:\n",
           "    if False:  # mutant\n",
           (f"{T_PROTOCOL}::test_thresholds_accept_exactly_the_split_set_safe_committees",
            f"{T_PROTOCOL}::test_check_announce_refuses_an_unsafe_announce_built_by_hand"),
           "the committee size rule n < 2r - t (split-set safety)"),
    Mutant("committee_draw", "sda/committee.py",
           "    if [c.clerk_id for c in drawn] != [m.clerk_id for m in announce.committee]:\n",
           "    if False:  # mutant\n",
           (COMMITTEE,),
           "the announced committee must be the draw from the clerk snapshot"),
    Mutant("committee_snapshot_hash", "sda/committee.py",
           "    if snapshot_hash(candidates) != announce.clerks_hash:\n",
           "    if False:  # mutant\n",
           (COMMITTEE,),
           "the clerk snapshot must hash to the announce's clerks_hash"),
    Mutant("committee_keys", "sda/committee.py",
           "        if (m.sign_key, m.box_key) != (c.sign_key, c.box_key):\n",
           "        if False:  # mutant\n",
           (COMMITTEE,),
           "committee members' keys must be the snapshot's"),
    Mutant("committee_cooldown", "sda/committee.py",
           "        if not c.eligible:\n",
           "        if False:  # mutant\n",
           (COMMITTEE,),
           "a clerk in cool-down or excluded cannot sit on a committee"),
    Mutant("committee_points", "sda/committee.py",
           "    if [m.point for m in announce.committee] != list(range(1, len(announce.committee) + 1)):\n",
           "    if False:  # mutant\n",
           (COMMITTEE,),
           "evaluation points are 1..n in draw order"),
    Mutant("server_duplicate", "sda/protocol/server.py",
           "        if (msg.device_id in self._noise) if noise else (idx in self._inputs):\n",
           "        if False:  # mutant\n",
           (f"{T_PROTOCOL}::test_server_refuses_a_duplicate_and_keeps_the_first",),
           "the server refuses a duplicate participation and keeps the first"),
    Mutant("coordinator_closed_round", "sda/services/coordinator.py",
           '        if row.state != "collecting":\n            self._ingest.pop(aggregation_id, None)\n',
           "        if False:  # mutant\n            self._ingest.pop(aggregation_id, None)\n",
           (SPLIT_SET_SERVICES,),
           "the coordinator service refuses participations of a round that is not collecting",
           # the store's closed collection still keeps the participation out, unlogged; or, depending on timing,
           # the coordinator takes participations while it snapshots and the round sticks
           expect=("did not refuse the late participation as not collecting", "round-s stuck in")),
    Mutant("server_closed_round", "sda/protocol/server.py",
           "        if self.snapshot_taken is not None:\n            raise ProtocolError(",
           "        if False:  # mutant\n            raise ProtocolError(",
           (f"{T_PROTOCOL}::test_server_refuses_after_the_snapshot",),
           "the core server refuses participations after its snapshot"),
    Mutant("recipient_replay", "sda/protocol/recipient.py",
           "        if idx in self._shares:\n",
           "        if False:  # mutant\n",
           (f"{T_PROTOCOL}::test_recipient_refuses_a_replayed_result",),
           "the recipient refuses a replayed clerk result"),
    Mutant("release_signature", "assistant/learning/release.py",
           "        env.verify(coordinator_public_key)\n",
           "        pass  # mutant\n",
           (RELEASE,),
           "a model release's Ed25519 signature is verified"),
    Mutant("release_monotonic_version", "assistant/learning/release.py",
           "    if r.version <= current_version:\n",
           "    if False:  # mutant\n",
           (RELEASE,),
           "a release whose version is not above the highest seen (replay, older) is refused"),
    Mutant("acl_device_participation", "sda/mqtt/topics.py",
           'f"pattern write {PREFIX}/agg/+/participation/%u",',
           'f"pattern write {PREFIX}/agg/+/participation/+",',
           ("tests/test_acl.py::test_device_cannot_publish_as_another_device",),
           "the broker ACL lets a device write only its own participation topic (%u)"),
    Mutant("coordinator_signer_is_topic_party", "sda/services/coordinator.py",
           "        if env.signer != party_id:\n",
           "        if False:  # mutant\n",
           ("tests/test_services_mqtt.py::test_bad_input_on_every_topic_is_rejected_and_the_next_round_succeeds",),
           "the coordinator requires the envelope's signer to be the party of the topic it came on",
           expect=("signed as 'clerk0' but published by 'mal0'",)),
    Mutant("snapshot_waits_for_all_clerk_noise", "sda/protocol/server.py",
           "        if missing:\n",
           "        if False:  # mutant\n",
           (SYBIL, "tests/test_clerk_noise.py::test_snapshot_without_every_clerks_noise_is_refused"),
           "the server's snapshot refuses a round missing any clerk's noise share"),
    Mutant("clerk_noise_is_zero", "sda/protocol/noise_participant.py",
           "        noise = clerk_noise_share(a.dimension, a.noise_sigma, a.n, a.t, rng)\n",
           "        noise = np.zeros(a.dimension, np.int64)  # mutant\n",
           (SYBIL,),
           "an honest clerk adds its Skellam noise share"),
    Mutant("envelope_signature", "sda/protocol/messages.py",
           "    env.verify(key)\n    return kind.decode(env.payload), env\n",
           "    return kind.decode(env.payload), env  # mutant\n",
           ("tests/test_messages.py::test_payload_modified_after_signing_is_refused",),
           "open_signed verifies the Ed25519 signature of an envelope"),
    Mutant("clerk_min_participants", "sda/protocol/clerk.py",
           "        if len(S) < a.min_participants:\n",
           "        if False:  # mutant\n",
           (f"{T_PROTOCOL}::test_clerk_refuses_fewer_than_min_participants",),
           "a clerk refuses a participant set smaller than min_participants"),
    Mutant("frame_oversized_whole", "sda/mqtt/framing.py",
           "            if len(data) - 1 > self.max_message_bytes:\n",
           "            if False:  # mutant\n",
           (REASSEMBLER,),
           "a whole frame over max_message_bytes is dropped before decoding"),
    Mutant("frame_oversized_chunked", "sda/mqtt/framing.py",
           "        if part.size > self.max_message_bytes:\n",
           "        if False:  # mutant\n",
           (REASSEMBLER,),
           "a chunked message growing over max_message_bytes is dropped"),
    Mutant("model_file_hash", "assistant/kws/model.py",
           "        if want != sha256_file(path):\n",
           "        if False:  # mutant\n",
           ("tests/test_shipped_models.py::test_a_tampered_or_missing_file_is_refused",),
           "a model file whose SHA-256 does not match its card is not loaded"),
    Mutant("privacy_budget_refusal", "assistant/learning/policy.py",
           "    if not ledger.can_afford(cost):\n",
           "    if False:  # mutant\n",
           ("tests/test_learning.py::test_a_round_over_budget_is_refused_and_recorded_as_such",),
           "a learning round over the owner's privacy budget is refused"),
    Mutant("privacy_ledger_afford", "assistant/learning/privacy.py",
           "        return self.epsilon_after(cost) <= self.budget\n",
           "        return True  # mutant\n",
           ("tests/test_learning.py::test_the_ledger_refuses_a_round_over_budget",),
           "the privacy ledger says a round over budget is not affordable"),
    Mutant("privacy_cost_before_resend", "sda/services/participant.py",
           "            if time.time() <= a.participation_deadline and self._committed(a):\n",
           "            if time.time() <= a.participation_deadline:  # mutant\n",
           ("tests/test_faults_device.py::test_kill_9_of_a_device_at_each_point_of_a_learning_round",),
           "a participation recorded before a crash is re-sent only after its privacy cost is committed"),
    Mutant("privacy_cost_before_send", "sda/services/participant.py",
           "        if not self._committed(a):\n            return\n",
           "        if False:  # mutant\n            return\n",
           ("tests/test_faults_device.py::test_kill_9_of_a_device_at_each_point_of_a_learning_round",),
           "a new participation is sent only after its privacy cost is committed"),
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_copy(dest: Path) -> None:
    """The checkout's code, tests and models (working tree, as on disk) under `dest`."""
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORED, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def apply(copy: Path, m: Mutant) -> str:
    """Apply `m` in `copy`; returns the original text to restore. Fails loudly when `old` is not there once."""
    path = copy / m.file
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        raise SystemExit(f"mutant {m.name}: {m.old!r} occurs {count} times in {m.file} (code drifted?)")
    path.write_text(text.replace(m.old, m.new))
    return text


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must not be shadowed by a stale mutant .pyc
    env.pop("ASSISTANT_MODELS", None)
    return env


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def check_isolation(copy: Path) -> None:
    """A process spawned from a test (its own interpreter, other cwd) must import sda and assistant from the
    copy, not from the editable install in the checkout."""
    code = ("import subprocess, sys; print(subprocess.run([sys.executable, '-c', 'import sda, assistant;"
            " print(sda.__file__); print(assistant.__file__)'], capture_output=True, text=True, check=True,"
            " cwd='/').stdout, end='')")
    out = subprocess.run([python(), "-c", code], capture_output=True, text=True, check=True, cwd=copy,
                         env=env_for(copy)).stdout.split()
    log(f"isolation: a grandchild process imports {out}")
    for f in out:
        if not Path(f).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"spawned processes import {f}, not the copy in {copy}: PYTHONPATH does not win")


@dataclass(frozen=True)
class Run:
    outcome: str  # "passed", "failed" (a test failed, nothing errored), "timeout", or "error" (anything else)
    seconds: float
    output: str

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.output.strip().splitlines()[-n:])

    def errors(self) -> str:
        """pytest's error lines (E ..., FAILED ..., TIMEOUT): the source it quotes is left out, as a test's
        own text may name a message the code never logged."""
        return "\n".join(ln for ln in self.output.splitlines() if ln.startswith(("E ", "FAILED", "TIMEOUT")))

    def why(self) -> str:
        """The lines of pytest's output that say why the tests did not pass (for the log)."""
        lines = self.output.splitlines()
        found = []
        for prefix in ("TIMEOUT", "FAILED", "ERROR", "E   "):
            found += [ln.strip()[:240] for ln in lines if ln.startswith(prefix)][:1]
        return "\n    ".join(found) or self.tail(3)


def run_tests(copy: Path, tests: tuple[str, ...], stop_first: bool = True, timeout_s: float = TIMEOUT_S) -> Run:
    """pytest over `tests` in `copy`. On a timeout the whole process group pytest leads (the brokers and
    services a test spawned) is killed. "failed" needs pytest's exit code 1 with no error (collection,
    fixture set-up): a mutant that breaks an import or a fixture is not a kill by the test's assertions."""
    cmd = [python(), "-m", "pytest", "-q", *(["-x"] if stop_first else []), "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    with subprocess.Popen(cmd, cwd=copy, env=env_for(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True) as p:
        try:
            raw, _ = p.communicate(timeout=timeout_s)
            code: int | None = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raw, _ = p.communicate()
            raw, code = raw + f"\nTIMEOUT after {timeout_s:g} s".encode(), None
    out = raw.decode(errors="replace")
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    if code is None:
        outcome = "timeout"
    elif code == 0:
        outcome = "passed"
    elif code == 1 and " error" not in summary and "\nERROR " not in out:
        outcome = "failed"
    else:
        outcome = "error"
    return Run(outcome, round(time.monotonic() - t0, 1), out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--attempts", type=int, default=3, metavar="N",
                    help="runs of a test before it counts as failing for another reason (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is logged)")
    args = ap.parse_args(argv)

    if args.list:
        for m in MUTANTS:
            print(f"{m.name:36s} {m.file:34s} {m.what}\n{'':36s} tests: {' '.join(m.tests)}")
        return 0
    by_name = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.only or [] if n not in by_name]
    if unknown:
        ap.error(f"unknown mutant(s) {unknown}; see --list")
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTANTS)

    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="sda-mutants-"))
    copy = tmp / "repo"
    results: dict[str, dict] = {}
    try:
        make_copy(copy)
        for m in chosen:  # every edit must apply to today's code before anything runs
            (copy / m.file).write_text(apply(copy, m))
        check_isolation(copy)

        # Every named test, unmutated, in one pytest run (one start-up): all must pass.
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        base = run_tests(copy, tests, stop_first=False, timeout_s=3 * TIMEOUT_S)
        log(f"baseline {base.outcome} {base.seconds:7.1f} s  {len(tests)} tests unmutated")
        broken = [] if base.outcome == "passed" else list(tests)
        if broken:  # which ones, and are they only flaky (whole deployments on a loaded machine)?
            log(base.tail(40))
            for test in tests:
                runs = 0
                while runs < args.attempts:
                    run, runs = run_tests(copy, (test,)), runs + 1
                    if run.outcome == "passed":
                        broken.remove(test)
                        break
                log(f"baseline {run.outcome} (run {runs} of at most {args.attempts}): {test}")
                if run.outcome != "passed":
                    log(run.tail(40))
        if broken:
            log(f"unmutated tests do not pass, so no verdict is meaningful: {broken}")
            print(json.dumps({"error": "baseline failed", "tests": broken}))
            return 2

        for m in chosen:
            original = apply(copy, m)
            seconds = 0.0
            try:
                for attempt in range(1, args.attempts + 1):
                    run = run_tests(copy, m.tests)
                    seconds += run.seconds
                    # A test that fails, or hangs, under the mutant kills it; an error (import, fixture) does
                    # not, nor (with `expect`) a failure that is not the one the missing defence causes.
                    errors = run.errors()
                    named = not m.expect or any(e in errors for e in m.expect)
                    killed = run.outcome in ("failed", "timeout") and named
                    if killed or run.outcome == "passed":
                        break
                    log(f"    attempt {attempt}: {run.outcome}, not by {m.expect!r}: {run.why()}")
            finally:
                (copy / m.file).write_text(original)
            results[m.name] = {"killed": killed, "seconds": round(seconds, 1), "test": " ".join(m.tests)}
            verdict = "killed" if killed else "SURVIVED" if run.outcome == "passed" else "UNPROVEN"
            log(f"{verdict:8s} {seconds:7.1f} s  {m.name}: {m.what}")
            log(f"    {run.why()}" if killed else run.tail(40))
    finally:
        if args.keep:
            log(f"copy kept in {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    survived = [n for n, r in results.items() if not r["killed"]]
    log(f"total {time.monotonic() - t_start:.0f} s")
    print(json.dumps({"mutants": len(results), "killed": len(results) - len(survived), "survived": survived,
                      "results": results}))
    return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main())
