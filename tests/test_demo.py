"""`make demo`'s MQTT round, small: embedded broker, coordinator, clerks, two device processes."""

import io

from sda.services.demo import run_demo


def test_demo_round_over_the_embedded_broker_reveals_the_true_sum():
    out = io.StringIO()
    assert run_demo(devices=20, clerks=6, dimension=4, out=out) is True
    text = out.getvalue()
    assert "embedded MQTT broker on mqtt://127.0.0.1:" in text
    assert "20 devices" in text and "revealed sum equals the true sum: True" in text
