"""The service commands of `sda`: coordinator, clerk and admin (see `sda --help`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from ..mqtt.transport import BrokerConfig
from .keys import Credentials, load_or_create_identity
from .storage import open_store


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("amqtt").setLevel(logging.WARNING)


def _wait_for_signal() -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()


def coordinator_command(args: argparse.Namespace) -> int:
    """`sda coordinator run|new|show|keys`."""
    if args.action == "run":
        return _coordinator_run(args)
    if args.action == "new":
        from .coordinator import AggregationSpec

        store = open_store(args.database, args.state)
        spec = AggregationSpec(
            aggregation_id=args.aggregation_id, dimension=args.dimension, scale=args.scale,
            clip_lo=args.clip[0], clip_hi=args.clip[1], min_participants=args.min_participants,
            collect_s=args.collect_seconds, results_s=args.result_seconds,
            committee_size=args.committee_size,
        )
        from dataclasses import asdict

        if not store.create_aggregation(spec.aggregation_id, asdict(spec)):
            print(f"sda: error: aggregation {spec.aggregation_id!r} already exists", file=sys.stderr)
            return 1
        print(f"aggregation {spec.aggregation_id} queued; the running coordinator announces it")
        return 0
    if args.action == "show":
        return _coordinator_show(args)
    if args.action == "keys":
        pub = load_or_create_identity(args.state / "coordinator.key").public()
        print(json.dumps({"sign_key": pub.sign_key.hex(), "box_key": pub.box_key.hex()}))
        return 0
    print("sda coordinator: choose an action: run, new, show, keys (see --help)", file=sys.stderr)
    return 2


def _coordinator_run(args: argparse.Namespace) -> int:
    from ..mqtt.broker import EmbeddedBroker
    from .coordinator import Coordinator, CoordinatorConfig

    _logging()
    broker = BrokerConfig.from_url(args.broker, protocol=args.protocol, tls_ca=args.tls_ca)
    embedded = None
    if args.embedded_broker:
        embedded = EmbeddedBroker(broker.host, broker.port)
        embedded.start()
        broker = BrokerConfig(**{**broker.__dict__, "port": embedded.port})
        logging.getLogger("sda").info("embedded broker on %s", embedded.url)
    coord = Coordinator(CoordinatorConfig(
        state_dir=args.state, broker=broker, client_id=args.client_id,
        ingest_only=args.ingest_only, shared_group=args.shared_group,
        grant_stake=args.grant_stake, device_reward=args.device_reward,
    ), store=open_store(args.database, args.state))
    coord.start()
    print(f"coordinator running (state {args.state}); Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        _wait_for_signal()
    finally:
        coord.stop()
        st = coord.stats
        logging.getLogger("sda.coordinator").info(
            "coordinator stopped: %d participations accepted, %d duplicates, rejected %s",
            st.accepted, st.duplicates, dict(st.rejected))
        if embedded is not None:
            embedded.stop()
    return 0


def _coordinator_show(args: argparse.Namespace) -> int:
    store = open_store(args.database, args.state, must_exist=True)
    rows = [store.aggregation(args.aggregation_id)] if args.aggregation_id else store.aggregations()
    if rows == [None]:
        print(f"sda: error: no aggregation {args.aggregation_id!r}", file=sys.stderr)
        return 1
    out = []
    for r in rows:
        assert r is not None
        out.append({
            "aggregation_id": r.aggregation_id, "state": r.state,
            "participations": store.participation_count(r.aggregation_id),
            "results": len(store.results(r.aggregation_id)),
            "result": r.result, "error": r.error, "spec": r.spec,
            "created_at": r.created_at, "updated_at": r.updated_at,
        })
    if args.json:
        print(json.dumps(out[0] if args.aggregation_id else out))
    else:
        for o in out:
            res = o["result"] or {}
            print(f"{o['aggregation_id']:<24} {o['state']:<10} participations {o['participations']:>6}"
                  f"  results {o['results']:>4}  {o['error'] or ''}"
                  + (f"  wrong clerks {res.get('wrong_clerks')}" if res.get("wrong_clerks") else ""))
    return 0


def clerk_command(args: argparse.Namespace) -> int:
    """`sda clerk --credentials FILE --state DIR`."""
    from .clerk import ClerkConfig, ClerkService

    _logging()
    cred = Credentials.load(args.credentials)
    broker = cred.broker
    if args.broker:
        b = BrokerConfig.from_url(args.broker)
        broker = BrokerConfig(**{**broker.__dict__, "host": b.host, "port": b.port})
    svc = ClerkService(ClerkConfig(cred.party_id, args.state, broker, cred.coordinator_id,
                                   cred.coordinator_sign_key))
    svc.start()
    print(f"clerk {cred.party_id} running; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        _wait_for_signal()
    finally:
        svc.stop()
    return 0


def admin_command(args: argparse.Namespace) -> int:
    """`sda admin add-device|add-clerk NAME`: broker password, ACL, credentials file."""
    from ..mqtt import mosquitto

    if args.action == "mint":
        from ..ledger import Ledger

        with Ledger(args.state / "ledger.db") as book:
            entry = book.mint(args.name, args.amount, args.memo)
            bal = book.balance(args.name)
        print(f"minted {args.amount} to {args.name} (entry {entry.entry_id}); {args.name} now has"
              f" {bal.available} available, {bal.staked} staked")
        return 0
    if args.action not in ("add-device", "add-clerk"):
        print("sda admin: choose an action: add-device, add-clerk, mint (see --help)", file=sys.stderr)
        return 2
    role = args.action.removeprefix("add-")
    try:
        mosquitto.check_username(args.name)
    except ValueError as exc:
        print(f"sda: error: {exc}", file=sys.stderr)
        return 2
    coord = load_or_create_identity(args.state / "coordinator.key").public()
    password = mosquitto.generate_password()
    if args.passwd_file is not None:
        mosquitto.add_user(args.passwd_file, args.name, password)
    if args.acl_file is not None:
        mosquitto.write_acl(args.acl_file)
    base = BrokerConfig.from_url(args.broker)
    cred = Credentials(
        party_id=args.name, role=role,
        broker=BrokerConfig(host=base.host, port=base.port, username=args.name, password=password,
                            tls_ca=base.tls_ca),
        coordinator_id="coordinator", coordinator_sign_key=coord.sign_key, coordinator_box_key=coord.box_key,
    )
    out = args.out or Path(f"{args.name}.yaml")
    cred.save(out)
    print(f"{role} {args.name}: credentials written to {out} (mode 0600)"
          + (f"; added to {args.passwd_file} (reload mosquitto to apply)" if args.passwd_file else ""))
    return 0




def ledger_command(args: argparse.Namespace) -> int:
    """`sda ledger balance|history|stake|unstake`: one signed request, one signed answer."""
    import os
    import queue

    from ..errors import SdaError
    from ..ledger import verify_receipt
    from ..mqtt import topics
    from ..mqtt.transport import Transport
    from ..protocol.messages import open_signed, seal
    from .ledger_api import LedgerRequest, LedgerResponse

    cred = Credentials.load(args.credentials)
    ident = load_or_create_identity(args.key) if args.key.exists() else None
    if ident is None:
        print(f"sda: error: no identity file at {args.key}", file=sys.stderr)
        return 1
    if args.action in ("stake", "unstake") and args.amount <= 0:
        print("sda: error: give a positive AMOUNT to stake or unstake", file=sys.stderr)
        return 2
    answers: queue.Queue = queue.Queue()
    request_id = os.urandom(8).hex()
    broker = BrokerConfig(**{**cred.broker.__dict__, "session_expiry_s": 60})
    t = Transport(f"{cred.party_id}-cli-{request_id[:6]}", broker, lambda tp, p, r, ack: answers.put(p))
    t.start()
    try:
        t.subscribe(topics.inbox(cred.party_id))
        time.sleep(0.3)
        req = LedgerRequest(cred.party_id, request_id, args.action, args.amount)
        t.publish(topics.ledger_request(cred.party_id), seal(req, cred.party_id, ident))
        key_of = {cred.coordinator_id: cred.coordinator_sign_key}.get
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                raw = answers.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                resp, _ = open_signed(raw, LedgerResponse, key_of)
            except SdaError:
                continue  # a receipt or another message in the inbox
            if resp.request_id != request_id:
                continue
            receipts = [verify_receipt(r, cred.coordinator_id, cred.coordinator_sign_key, cred.party_id)
                        for r in resp.receipts]
            out = {"party": cred.party_id, "ok": resp.ok, "error": resp.error, "available": resp.available,
                   "staked": resp.staked, "entries": [
                       {"entry_id": r.entry_id, "kind": r.kind, "memo": r.memo, "available": r.amount_available,
                        "staked": r.amount_staked, "time": r.time} for r in receipts]}
            if args.json:
                print(json.dumps(out))
            else:
                if not resp.ok:
                    print(f"refused: {resp.error}")
                print(f"{cred.party_id}: {resp.available} available, {resp.staked} staked")
                for e in out["entries"]:
                    print(f"  #{e['entry_id']:<6} {e['kind']:<8} available {e['available']:+d}"
                          f" staked {e['staked']:+d}  {e['memo']}")
            return 0 if resp.ok else 1
        print(f"sda: error: no answer from the coordinator within {args.timeout} s", file=sys.stderr)
        return 1
    finally:
        t.stop()


def committee_command(args: argparse.Namespace) -> int:
    """`sda committee verify ANNOUNCE_FILE --pages ...`."""
    from .. import committee
    from ..errors import SdaError
    from ..mqtt.framing import unframe
    from ..protocol.messages import ClerkSnapshot
    from ..protocol.params import open_announce
    from .pages import PageAssembler

    if args.action != "verify":
        print("sda committee: choose an action: verify (see --help)", file=sys.stderr)
        return 2
    key = bytes.fromhex(args.coordinator_key)
    try:
        a = open_announce(unframe(args.announce_file.read_bytes()), args.coordinator_id, key)
        pages = PageAssembler(ClerkSnapshot, "clerks_hash", {args.coordinator_id: key}.get, keep=len(args.pages))
        for p in args.pages:
            pages.feed(unframe(p.read_bytes()))
        cands = pages.complete.get(a.clerks_hash)
        if cands is None:
            raise committee.CommitteeError("the pages do not make up the clerk snapshot this announce names")
        committee.verify(a, [committee.Candidate(*e) for e in cands])
    except (SdaError, OSError) as exc:
        print(f"REFUSED: {exc}")
        return 1
    print(f"OK: the committee of {a.aggregation_id} ({a.n} clerks) is the log-stake draw from its snapshot")
    return 0


def analytics_command(args: argparse.Namespace) -> int:
    """`sda analytics report --day D`: the day's revealed counters as a table and a PNG chart."""
    from dataclasses import asdict

    from .report import analytics_id, day_report, format_table, write_chart

    if args.action != "report":
        print("sda analytics: choose an action: report (see --help)", file=sys.stderr)
        return 2
    agg = analytics_id(args.day)
    store = open_store(args.database, args.state, must_exist=True)
    try:
        row = store.aggregation(agg)
    finally:
        store.close()
    if row is None:
        print(f"sda: error: no aggregation {agg!r} in {args.state}", file=sys.stderr)
        return 1
    report = day_report(agg, row.state, row.spec, row.result, row.error)
    chart = write_chart(report, args.chart or Path(f"analytics-{args.day}.png"))
    if args.json:
        print(json.dumps({**asdict(report), "chart": str(chart)}))
    else:
        print(format_table(report))
        print(f"chart: {chart}")
    return 0
