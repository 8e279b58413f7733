"""The broker enforces DESIGN §6: each topic is written only by its party, by authenticated username.

Against a real Mosquitto 2.x (the `mosquitto` fixture of conftest.py, provisioned by
sda.mqtt.mosquitto), with paho-mqtt 2.x clients speaking MQTT v5 so that refusals come back as
reason codes. Also the provisioning helpers themselves and the committed systemd/mosquitto files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import queue
import secrets
import ssl
import stat
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import MosquittoBroker
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sda.errors import TransportError
from sda.mqtt import mosquitto as provision
from sda.mqtt import topics

ROOT = Path(__file__).resolve().parent.parent
NOT_AUTHORIZED = 0x87
BAD_USER_OR_PASSWORD = 0x86
# A v5 PUBACK that accepts: 0x00, or 0x10 "No matching subscribers" (Mosquitto says so when nobody
# is subscribed; so a client can tell whether anyone listens on a topic it may write).
ACCEPTED = {0x00, 0x10}
WAIT = 5.0  # seconds to wait for something that must happen
QUIET = 0.3  # seconds of silence after the control message has arrived


class Client:
    """A paho-mqtt 2.x client that turns callbacks into return values."""

    def __init__(
        self,
        broker: MosquittoBroker,
        user: str | None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        protocol: int = mqtt.MQTTv5,
        clean_start: bool = True,
        session_expiry: int | None = None,
        tls_ca: Path | None = None,
        port: int | None = None,
    ) -> None:
        self.client_id = client_id or f"{user or 'anon'}-{secrets.token_hex(4)}"
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol
        )
        if user is not None:
            self.c.username_pw_set(user, broker.passwords[user] if password is None else password)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=str(tls_ca))
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnects: list[int] = []
        self._acks: dict[int, object] = {}
        self._cond = threading.Condition()
        self._connack: list = []
        self.session_present: bool | None = None
        self.c.on_connect = self._on_connect
        self.c.on_publish = self._on_ack
        self.c.on_subscribe = self._on_ack
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)
        self.c.on_disconnect = self._on_disconnect
        kwargs = {}
        if protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = clean_start
            if session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = session_expiry
                kwargs["properties"] = props
        self.c.reconnect_delay_set(60, 60)  # no automatic reconnection within a test
        self.c.connect(broker.host, port or broker.port, keepalive=30, **kwargs)
        self.c.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connack, WAIT):
                raise TimeoutError("no CONNACK")
        self.rc = self._connack[0]
        if self.rc.value != 0:
            self.close()

    def _on_connect(self, _c, _u, flags, rc, _p):
        with self._cond:
            self.session_present = flags.session_present
            self._connack.append(rc)
            self._cond.notify_all()

    def _on_disconnect(self, _c, _u, _f, rc, _p):
        with self._cond:
            self.disconnects.append(rc.value)
            self._cond.notify_all()

    def _on_ack(self, _c, _u, mid, rc, _p):
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()

    def _wait_ack(self, mid: int):
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acks, WAIT):
                raise TimeoutError(f"no acknowledgement for message id {mid}")
            return self._acks.pop(mid)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """QoS 1 publish; the PUBACK's reason code value (v5; always 0 in v3.1.1)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_ack(info.mid).value

    def subscribe(self, topic_filter: str) -> int:
        """QoS 1 subscribe; the SUBACK's reason code value (1: granted QoS 1)."""
        result, mid = self.c.subscribe(topic_filter, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        (rc,) = self._wait_ack(mid)
        return rc.value

    def next_message(self, timeout: float = WAIT) -> mqtt.MQTTMessage | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while not self.messages.empty():
            m = self.messages.get_nowait()
            out.append((m.topic, m.payload))
        return out

    def wait_disconnected(self, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.disconnects, timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(mosquitto):
    """Make connected clients on the session broker; all closed at the end of the test."""
    made: list[Client] = []

    def make(user: str | None, password: str | None = None, **kw) -> Client:
        c = Client(mosquitto, user, password, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _agg() -> str:
    return f"a{secrets.token_hex(4)}"


# -- publishing: only to one's own topics ----------------------------------------------------------


def test_device_cannot_publish_as_another_device(clients):
    agg = _agg()
    coordinator = clients("coordinator")
    assert coordinator.subscribe(topics.ALL_PARTICIPATIONS) == 1
    dev1 = clients("dev1")

    assert dev1.publish(topics.participation(agg, "dev2"), b"forged") == NOT_AUTHORIZED
    # Control: dev1's own topic, published after the forged one, reaches the coordinator first.
    assert dev1.publish(topics.participation(agg, "dev1"), b"mine") in ACCEPTED
    m = coordinator.next_message()
    assert m is not None
    assert (m.topic, m.payload) == (topics.participation(agg, "dev1"), b"mine")
    time.sleep(QUIET)
    assert coordinator.drain() == []


def test_devices_and_clerks_cannot_write_coordinator_topics(clients):
    agg = _agg()
    coordinator = clients("coordinator")
    assert coordinator.subscribe(f"{topics.PREFIX}/#") == 1
    dev1 = clients("dev1")
    clerk1 = clients("clerk1")
    for who, topic in [
        (dev1, topics.announce(agg)),
        (dev1, topics.job("clerk1", agg)),
        (dev1, topics.release("m1")),
        (dev1, topics.registry_snapshot()),
        (dev1, topics.inbox("dev2")),
        (dev1, topics.registration("dev2")),
        (dev1, topics.result(agg, "clerk1")),
        (clerk1, topics.result(agg, "clerk2")),
        (clerk1, topics.participation(agg, "dev1")),
        (clerk1, topics.job("clerk1", agg)),
    ]:
        assert who.publish(topic, b"x") == NOT_AUTHORIZED, topic
    assert clerk1.publish(topics.result(agg, "clerk1"), b"ok") in ACCEPTED
    m = coordinator.next_message()
    assert m is not None
    assert m.topic == topics.result(agg, "clerk1")
    time.sleep(QUIET)
    assert coordinator.drain() == []


def test_acl_matches_username_not_client_id(clients):
    """A device that calls itself "coordinator" is still dev1: %u, never %c."""
    agg = _agg()
    watcher = clients("coordinator")
    assert watcher.subscribe(f"{topics.PREFIX}/#") == 1
    impostor = clients("dev1", client_id="coordinator")
    assert impostor.rc.value == 0
    assert impostor.publish(topics.announce(agg), b"fake announce") == NOT_AUTHORIZED
    assert impostor.publish(topics.job("clerk1", agg), b"fake job") == NOT_AUTHORIZED
    assert impostor.publish(topics.participation(agg, "coordinator"), b"x") == NOT_AUTHORIZED
    # What the username dev1 may write, it still may.
    assert impostor.publish(topics.participation(agg, "dev1"), b"mine") in ACCEPTED
    m = watcher.next_message()
    assert m is not None
    assert m.topic == topics.participation(agg, "dev1")
    time.sleep(QUIET)
    assert watcher.drain() == []


# -- reading: only one's own jobs and inbox ------------------------------------------------------------


def test_device_cannot_read_a_clerks_jobs(clients):
    agg = _agg()
    dev1 = clients("dev1")
    # Mosquitto's acl_file never refuses a SUBSCRIBE (2.0.11 grants it; the dynamic-security plugin
    # could refuse): it filters each message on delivery by the read rules. Both are acceptable here;
    # what must hold is that nothing reaches dev1.
    assert dev1.subscribe(topics.jobs_of("clerk1")) in (1, NOT_AUTHORIZED)
    assert dev1.subscribe(f"{topics.PREFIX}/#") in (1, NOT_AUTHORIZED)
    clerk1 = clients("clerk1")
    assert clerk1.subscribe(topics.jobs_of("clerk1")) == 1
    coordinator = clients("coordinator")
    assert coordinator.publish(topics.job("clerk1", agg), b"job") in ACCEPTED
    assert coordinator.publish(topics.inbox("dev2"), b"for dev2") in ACCEPTED
    assert coordinator.publish(topics.inbox("dev1"), b"for dev1") in ACCEPTED

    m = clerk1.next_message()
    assert m is not None
    assert (m.topic, m.payload) == (topics.job("clerk1", agg), b"job")
    # dev1 gets its own inbox (through `sda/v1/#`), published last, and nothing before it.
    m = dev1.next_message()
    assert m is not None
    assert (m.topic, m.payload) == (topics.inbox("dev1"), b"for dev1")
    time.sleep(QUIET)
    assert dev1.drain() == []


def test_v311_refusals_are_silent(clients):
    """Why DESIGN §6 wants MQTT v5: in v3.1.1 a refused QoS 1 publish still gets a plain PUBACK."""
    agg = _agg()
    coordinator = clients("coordinator")
    assert coordinator.subscribe(topics.ALL_PARTICIPATIONS) == 1
    dev1 = clients("dev1", protocol=mqtt.MQTTv311)
    assert dev1.publish(topics.participation(agg, "dev2"), b"forged") == 0  # no way to tell
    assert dev1.publish(topics.participation(agg, "dev1"), b"mine") == 0
    m = coordinator.next_message()
    assert m is not None
    assert m.topic == topics.participation(agg, "dev1")  # the forged one was dropped all the same
    time.sleep(QUIET)
    assert coordinator.drain() == []


# -- connecting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_wrong_password_and_anonymous_are_refused(mosquitto, protocol):
    # Mosquitto 2.0.11 answers both with "Not authorized": 0x87 in v5, return code 5 in v3.1.1
    # (paho maps 5 to the same ReasonCode); later versions may use 0x86 / 4.
    refused = {NOT_AUTHORIZED, BAD_USER_OR_PASSWORD}
    assert mosquitto.connack("dev1", mosquitto.passwords["dev2"], protocol=protocol) in refused
    assert mosquitto.connack("dev1", "", protocol=protocol) in refused
    assert mosquitto.connack("nosuchuser", "whatever", protocol=protocol) in refused
    assert mosquitto.connack(None, None, protocol=protocol) in refused
    assert mosquitto.connack("dev1", mosquitto.passwords["dev1"], protocol=protocol) == 0


def test_client_id_takeover_and_use_username_as_clientid(clients):
    """With %u-only ACLs a device still cannot write as the coordinator, but Mosquitto lets any
    authenticated user take over any client id: it disconnects the coordinator's connection. The
    option `use_username_as_clientid true` (commented in systemd/mosquitto/mosquitto.conf) stops it.
    """
    victim = clients("coordinator", client_id="coordinator")
    assert victim.rc.value == 0
    thief = clients("dev1", client_id="coordinator")
    assert thief.rc.value == 0
    assert victim.wait_disconnected(), "Mosquitto no longer lets another user take over a client id"

    with MosquittoBroker(("coordinator", "dev1"), use_username_as_clientid=True) as strict:
        victim = Client(strict, "coordinator", client_id="coordinator")
        thief = Client(strict, "dev1", client_id="coordinator")
        try:
            assert victim.rc.value == 0
            assert thief.rc.value == 0
            assert not victim.wait_disconnected(QUIET)
            # The thief's session is dev1's: it gets dev1's inbox, not the coordinator's traffic.
            assert thief.subscribe(f"{topics.PREFIX}/#") == 1
            assert victim.publish(topics.inbox("dev1"), b"hi dev1") in ACCEPTED
            m = thief.next_message()
            assert m is not None
            assert m.topic == topics.inbox("dev1")
        finally:
            thief.close()
            victim.close()


# -- the fixture's restart and reload ------------------------------------------------------------


def test_restart_keeps_retained_messages_and_sessions(mosquitto, clients):
    agg = _agg()
    coordinator = clients("coordinator")
    assert coordinator.publish(topics.announce(agg), b"announce", retain=True) in ACCEPTED
    # clean_start=False even on the first connection: Mosquitto 2.0.11 does not restore, after a
    # restart, a v5 session whose latest CONNECT had clean_start=1, whatever its expiry interval.
    offline = clients("coordinator", client_id=f"coord-{agg}", clean_start=False, session_expiry=3600)
    assert offline.subscribe(topics.ALL_PARTICIPATIONS) == 1
    offline.close()

    mosquitto.restart()

    dev1 = clients("dev1")
    assert dev1.publish(topics.participation(agg, "dev1"), b"while away") in ACCEPTED
    dev2 = clients("dev2")
    assert dev2.subscribe(topics.announce(agg)) == 1
    m = dev2.next_message()
    assert m is not None
    assert (m.payload, m.retain) == (b"announce", True)
    # Resume it with expiry 0, so that the session ends when this test disconnects.
    back = clients("coordinator", client_id=f"coord-{agg}", clean_start=False, session_expiry=0)
    assert back.session_present is True
    m = back.next_message()
    assert m is not None
    assert (m.topic, m.payload) == (topics.participation(agg, "dev1"), b"while away")
    # Leave no retained message behind for other tests.
    assert clients("coordinator").publish(topics.announce(agg), b"", retain=True) in ACCEPTED


def test_add_user_with_sighup_and_remove_user(mosquitto, clients):
    name = f"dev-{secrets.token_hex(3)}"
    assert mosquitto.connack(name, "not yet") in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)
    password = mosquitto.add_user(name)
    assert password == mosquitto.passwords[name]
    assert name in provision.list_users(mosquitto.passwd_file)
    new = clients(name)
    assert new.rc.value == 0
    # The reloaded ACL applies to the new user too: its own participation only.
    agg = _agg()
    assert new.publish(topics.participation(agg, name), b"x") in ACCEPTED
    assert new.publish(topics.participation(agg, "dev1"), b"x") == NOT_AUTHORIZED
    bystander = clients("dev1")
    mosquitto.remove_user(name)
    # The reload also closes the removed user's open connection, and only that one.
    assert new.wait_disconnected(), "a removed user's connection survived the SIGHUP"
    assert bystander.disconnects == []
    assert bystander.publish(topics.participation(agg, "dev1"), b"still here") in ACCEPTED
    assert name not in provision.list_users(mosquitto.passwd_file)
    assert mosquitto.connack(name, password) in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)
    assert mosquitto.connack("dev1", mosquitto.passwords["dev1"]) == 0


# -- provisioning helpers ----------------------------------------------------------------------------


def test_add_and_remove_user_in_a_password_file(tmp_path):
    pw = tmp_path / "passwd"
    provision.add_user(pw, "dev1", "first-password")
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    provision.add_user(pw, "dev2", "second")  # must not truncate: dev1 stays
    provision.add_user(pw, "dev1", "changed")
    assert provision.list_users(pw) == ["dev1", "dev2"]
    line = pw.read_text().splitlines()[0]
    assert line.startswith("dev1:$7$") and "changed" not in line  # hashed (PBKDF2-SHA512)
    provision.remove_user(pw, "dev1")
    assert provision.list_users(pw) == ["dev2"]
    with pytest.raises(TransportError, match="dev1"):
        provision.remove_user(pw, "dev1")
    with pytest.raises(TransportError, match="does not exist"):
        provision.remove_user(tmp_path / "missing", "dev1")


def test_add_user_keeps_the_mode_of_an_existing_file(tmp_path):
    pw = tmp_path / "passwd"
    provision.add_user(pw, "dev1", "p1")
    os.chmod(pw, 0o640)
    provision.add_user(pw, "dev2", "p2")
    assert stat.S_IMODE(pw.stat().st_mode) == 0o640


def test_provisioned_password_is_the_one_the_broker_accepts():
    users = ("coordinator", "dev1")
    with MosquittoBroker(users) as b:
        assert b.connack("dev1", b.passwords["dev1"]) == 0
        assert b.connack("dev1", b.passwords["coordinator"]) in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)


@pytest.mark.parametrize(
    "name", ["", "-dev", "dev/1", "dev+", "dev#", "dev:1", "dev 1", "a" * 65, "dév", "%u", None, 3]
)
def test_bad_usernames_are_refused(tmp_path, name):
    pw = tmp_path / "passwd"
    with pytest.raises(ValueError, match="username"):
        provision.add_user(pw, name, "password")
    assert not pw.exists()
    with pytest.raises(ValueError):
        provision.remove_user(pw, name)
    with pytest.raises(ValueError):
        provision.write_acl(tmp_path / "acl", name)


@pytest.mark.parametrize("password", ["", "two\nlines", "nul\0", "x" * 257])
def test_bad_passwords_are_refused(tmp_path, password):
    with pytest.raises(ValueError, match="password"):
        provision.add_user(tmp_path / "passwd", "dev1", password)


def test_missing_mosquitto_passwd_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(provision, "_PASSWD_FALLBACKS", ())
    with pytest.raises(TransportError, match="apt-get install mosquitto"):
        provision.add_user(tmp_path / "passwd", "dev1", "pw")


def test_mosquitto_passwd_failure_carries_its_stderr(tmp_path):
    with pytest.raises(TransportError, match="Unable to open"):
        provision.add_user(tmp_path / "no" / "such" / "dir" / "passwd", "dev1", "pw")


def test_generate_password():
    a, b = provision.generate_password(), provision.generate_password()
    assert a != b
    assert len(a) == 32
    assert all(c.isalnum() or c in "-_" for c in a)


def test_write_acl_writes_the_generated_lines_atomically(tmp_path):
    acl = tmp_path / "sda.acl"
    provision.write_acl(acl)
    expected = topics.acl_lines()
    while expected and expected[-1] == "":
        expected.pop()
    assert acl.read_text() == "\n".join(expected) + "\n"
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600
    os.chmod(acl, 0o640)
    provision.write_acl(acl, "coord2")
    assert "user coord2" in acl.read_text().splitlines()
    assert stat.S_IMODE(acl.stat().st_mode) == 0o640  # mode carried over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sda.acl"]  # no temporary file left


def test_write_config(tmp_path):
    conf = tmp_path / "mosquitto.conf"
    provision.write_config(
        conf,
        port=1883,
        passwd_file=tmp_path / "passwd",
        acl_file=tmp_path / "sda.acl",
        persistence_dir=tmp_path / "db",
        max_packet_bytes=65536,
        tls={"cafile": "/c/ca.crt", "certfile": "/c/server.crt", "keyfile": "/c/server.key"},
        use_username_as_clientid=True,
    )
    lines = conf.read_text().splitlines()
    # A listener option before the first `listener` line would open Mosquitto's default listener
    # (port 1883, every interface): it must follow each listener line.
    plain, tls = lines.index("listener 1883 127.0.0.1"), lines.index("listener 8883 127.0.0.1")
    assert [i for i, ln in enumerate(lines) if ln == "use_username_as_clientid true"] == [plain + 1, len(lines) - 1]
    assert tls > plain
    for expected in [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {tmp_path / 'passwd'}",
        f"acl_file {tmp_path / 'sda.acl'}",
        "persistence true",
        f"persistence_location {tmp_path / 'db'}/",
        "max_packet_size 65536",
        "listener 1883 127.0.0.1",
        "listener 8883 127.0.0.1",
        "cafile /c/ca.crt",
        "require_certificate false",
    ]:
        assert expected in lines, expected
    assert lines.index("per_listener_settings false") < lines.index("allow_anonymous false")
    provision.write_config(
        conf, port=1883, passwd_file="p", acl_file="a", persistence_dir=None, max_packet_bytes=None
    )
    text = conf.read_text()
    assert "persistence false" in text and "max_packet_size" not in text and "8883" not in text
    with pytest.raises(ValueError, match="tls"):
        provision.write_config(
            conf, port=1883, passwd_file="p", acl_file="a", persistence_dir=None, max_packet_bytes=None,
            tls={"cafile": "x"},
        )
    with pytest.raises(ValueError, match="port"):
        provision.write_config(
            conf, port=0, passwd_file="p", acl_file="a", persistence_dir=None, max_packet_bytes=None
        )


def _test_ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject, issuer, key, signer, *, ca: bool, san=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    srv_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("sda test CA", "sda test CA", ca_key, ca_key, ca=True)
    srv_cert = cert(
        "localhost", "sda test CA", srv_key, ca_key, ca=False,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    paths = tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        srv_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_listener_with_passwords(tmp_path):
    from brokers import free_port

    ca, crt, key = _test_ca(tmp_path)
    tls_port = free_port()
    tls = {"port": tls_port, "cafile": ca, "certfile": crt, "keyfile": key, "require_certificate": False}
    with MosquittoBroker(("coordinator", "dev1"), tls=tls) as b:
        ok = Client(b, "dev1", tls_ca=ca, port=tls_port)
        try:
            assert ok.rc.value == 0
            assert ok.publish(topics.participation("a1", "dev1"), b"over tls") in ACCEPTED
            assert ok.publish(topics.participation("a1", "dev2"), b"over tls") == NOT_AUTHORIZED
        finally:
            ok.close()
        bad = Client(b, "dev1", "wrong", tls_ca=ca, port=tls_port)
        assert bad.rc.value in (NOT_AUTHORIZED, BAD_USER_OR_PASSWORD)
        with pytest.raises(ssl.SSLError):
            Client(b, "dev1", tls_ca=crt, port=tls_port)  # a CA that did not sign the server


# -- the committed deployment files ------------------------------------------------------------------


def test_committed_acl_is_the_generated_one():
    committed = (ROOT / "systemd" / "mosquitto" / "sda.acl").read_text()
    assert committed == provision.acl_text("coordinator"), (
        "systemd/mosquitto/sda.acl drifted from topics.acl_lines(): regenerate it with\n"
        "  python -c 'from pathlib import Path; from sda.mqtt.mosquitto import write_acl; "
        "write_acl(Path(\"systemd/mosquitto/sda.acl\"))'"
    )


def test_committed_config_is_what_the_readme_promises():
    lines = [ln.strip() for ln in (ROOT / "systemd" / "mosquitto" / "mosquitto.conf").read_text().splitlines()]
    for expected in [
        "per_listener_settings false",
        "allow_anonymous false",
        "password_file /etc/mosquitto/passwd",
        "acl_file /etc/mosquitto/sda.acl",
        "persistence true",
        "listener 1883 127.0.0.1",
        "#listener 8883",
        "#require_certificate false",
    ]:
        assert expected in lines, expected
