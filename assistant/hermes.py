"""Detections on the device's local MQTT bus in the Snips/Rhasspy Hermes convention, so other
voice components (an ASR, an intent engine) can react: `hermes/hotword/{wakeword_id}/detected`."""

from __future__ import annotations

import json
import threading
from urllib.parse import urlsplit

from .errors import AssistantError


class HermesPublisher:
    """Publishes detections as Hermes JSON at QoS 1 to a local broker (mqtt://[user:pw@]host:port)."""

    def __init__(self, url: str, site_id: str = "default", client_id: str = "assistant-hotword"):
        import paho.mqtt.client as mqtt

        try:
            u = urlsplit(url)
            port = u.port  # ValueError for a port that is not a number in 0-65535
        except ValueError:
            u, port = None, None
        if u is None or u.scheme != "mqtt" or not u.hostname:
            raise AssistantError(f"local broker URL must look like mqtt://localhost:1883, got {url!r}")
        self.site_id = site_id
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if u.username:
            self._client.username_pw_set(u.username, u.password)
        self._connected = threading.Event()
        self._client.on_connect = lambda c, ud, fl, rc, pr: self._connected.set() if not rc.is_failure else None
        self._client.connect_async(u.hostname, port or 1883, 30)
        self._client.loop_start()

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """True once connected to the local broker."""
        return self._connected.wait(timeout_s)

    def detected(self, wakeword_id: str, score: float, time_s: float, model_version: str = "") -> None:
        """Publish one detection."""
        payload = {
            "siteId": self.site_id, "modelId": wakeword_id, "modelVersion": model_version,
            "modelType": "personal", "currentSensitivity": score, "detectionSignalMs": int(time_s * 1000),
            "sendAudioCaptured": None,
        }
        self._client.publish(f"hermes/hotword/{wakeword_id}/detected", json.dumps(payload), qos=1)

    def close(self) -> None:
        """Flush and disconnect."""
        self._client.loop_stop()
        self._client.disconnect()
