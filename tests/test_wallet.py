"""What a device shows its owner about its tokens: verified receipts, kept in its store."""

from sda import crypto
from sda.ledger import Ledger
from sda.mqtt.transport import BrokerConfig
from sda.protocol.messages import seal
from sda.services.participant import ParticipantClient, ParticipantConfig, ParticipationLog


def test_device_keeps_verified_receipts_and_reports_balance_and_history(tmp_path):
    coord = crypto.Identity.generate()
    book = Ledger(tmp_path / "ledger.db")
    book.mint("treasury", 100)
    entries = [book.reward("dev1", 4, "round a", key="a"), book.reward("dev1", 6, "round b", key="b")]
    log = ParticipationLog(tmp_path / "device.db")
    client = ParticipantClient(ParticipantConfig("dev1", BrokerConfig(), "coordinator", coord.public().sign_key),
                               crypto.Identity.generate(), provide=lambda a: None, log_=log)
    for e in entries:
        client._on_message("sda/v1/device/dev1/inbox", seal(book.receipt_for(e, "dev1"), "coordinator", coord),
                           False, lambda: None)
    forged = seal(book.receipt_for(entries[0], "dev1"), "coordinator", crypto.Identity.generate())
    client._on_message("sda/v1/device/dev1/inbox", forged, False, lambda: None)  # not the coordinator: ignored
    available, history = ParticipationLog(tmp_path / "device.db").wallet()  # survives a restart
    assert available == 10
    expected = [("reward", 6, "round b"), ("reward", 4, "round a")]
    assert [(h["kind"], h["amount"], h["memo"]) for h in history] == expected
    book.close()
