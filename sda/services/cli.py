"""The service commands of `sda`: coordinator, clerk and admin (see `sda --help`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
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

    if args.action not in ("add-device", "add-clerk"):
        print("sda admin: choose an action: add-device, add-clerk (see --help)", file=sys.stderr)
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

