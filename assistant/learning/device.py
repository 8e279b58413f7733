"""The device's connection to federated learning (DESIGN §8), started by `assistant run` next to the service
when the owner opted in: sda's participant client answering learning announces from the store's labels
(client.LearningClient) and, through the same client, the daily analytics announces when the owner opted in to
those too (analytics.participate.AnalyticsClient); and a release listener that verifies, checks and installs
signed releases into the device's versioned model directory and hot-swaps them into the running service
(install.ReleaseListener).

    versions = ModelVersions.adopt(model_versions_dir(store.root), shipped_model_dir)
    service = DeviceService(store, ServiceConfig(versions.current), ...)
    learning = DeviceLearning(store, versions, service.reload, config).start()
    ...
    learning.stop()

Two MQTT connections, both logged in as the device: the participant's (client id = the device id, as sda
expects) and the releases' ("{device id}-releases", with manual acknowledgement, so a release the device
has not handled yet is delivered again after a crash). What the device has sent is kept in
`participations.db` beside the store, so a restarted device re-sends the same bytes and never a second
gradient for a round.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sda.errors import BrokerUnreachable, SdaError
from sda.mqtt.transport import BrokerConfig, Transport
from sda.protocol.participant import ParticipantPolicy
from sda.services.keys import Credentials, load_or_create_identity
from sda.services.participant import ParticipantClient, ParticipantConfig, ParticipationLog

from ..analytics.participate import AnalyticsClient
from ..errors import AssistantError
from ..store import Store
from .client import LearningClient, model_clip_norm, model_head
from .errors import BrokerOffline, BrokerRefused
from .install import ModelVersions, Outcome, ReleaseInstaller, ReleaseListener, Trust
from .policy import LearningPolicy

log = logging.getLogger(__name__)

MODEL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # it goes into round ids (dot-separated) and MQTT topics
#: ParticipantPolicy's default: the smallest crowd a device hides in.
DEFAULT_MIN_CROWD = ParticipantPolicy().min_participants


def model_versions_dir(store_root: Path) -> Path:
    """Where the device keeps its model versions (install.ModelVersions): beside its store."""
    return Path(store_root) / "models"


def participation_log_path(store_root: Path) -> Path:
    """sda's record of what this device sent, per round (beside the store)."""
    return Path(store_root) / "participations.db"


def default_device_key(store_root: Path) -> Path:
    """The device's long-term keys, created on first use (beside the store, never sent anywhere)."""
    return Path(store_root) / "device.key"


def read_coordinator_key(value: str) -> bytes:
    """The coordinator's Ed25519 public key from hex, or from a file holding the hex or the JSON that
    `sda coordinator keys` prints; AssistantError naming the value otherwise."""
    text = value.strip()
    path = Path(text)
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text) and path.is_file():
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AssistantError(f"coordinator key file {path}: cannot read it as text ({exc})") from exc
        if text.startswith("{"):
            try:
                text = str(json.loads(text)["sign_key"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AssistantError(f"coordinator key file {path}: no \"sign_key\" in it ({exc})") from exc
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise AssistantError(f"coordinator key {value!r}: need 64 hex digits (an Ed25519 public key), a file"
                             " holding them, or the JSON of `sda coordinator keys`")
    return bytes.fromhex(text)


@dataclass(frozen=True)
class LearningConfig:
    """How the device reaches learning: its id and broker login, the coordinator's id and signing key (the
    trust anchor for announces and releases), its key file, the model id of the rounds and releases it takes,
    and the smallest crowd it will hide in."""

    device_id: str
    broker: BrokerConfig
    coordinator_id: str
    coordinator_sign_key: bytes
    device_key: Path
    model_id: str
    min_crowd: int = DEFAULT_MIN_CROWD
    min_new_labels: int = LearningPolicy().min_new_labels

    def __post_init__(self) -> None:
        if not MODEL_ID.fullmatch(self.model_id):
            raise AssistantError(f"learning model id {self.model_id!r}: need 1-64 letters, digits, _ or -")
        if not self.device_id or any(c in self.device_id for c in "/+#"):
            raise AssistantError(f"device id {self.device_id!r}: need a non-empty name without / + or #")
        if len(self.coordinator_sign_key) != 32:
            raise AssistantError(f"coordinator signing key: {len(self.coordinator_sign_key)} bytes, need 32")
        if self.min_crowd < 2:
            raise AssistantError(f"min_crowd {self.min_crowd}: need at least 2 (a sum over one device is its own)")
        if self.min_new_labels < 1:
            raise AssistantError(f"min_new_labels {self.min_new_labels}: need at least 1")

    @classmethod
    def from_credentials(cls, path: Path, device_key: Path, model_id: str, broker_url: str | None = None,
                         **kw: object) -> LearningConfig:
        """From the file `sda admin add-device NAME` wrote; `broker_url` replaces its host and port."""
        try:
            cred = Credentials.load(path)
            broker = cred.broker
            if broker_url:
                b = BrokerConfig.from_url(broker_url)
                broker = BrokerConfig(**{**broker.__dict__, "host": b.host, "port": b.port, "tls_ca": b.tls_ca or
                                         broker.tls_ca})
        except SdaError as exc:
            raise AssistantError(str(exc)) from exc
        return cls(cred.party_id, broker, cred.coordinator_id, cred.coordinator_sign_key, device_key, model_id,
                   **kw)  # type: ignore[arg-type]

    @classmethod
    def from_url(cls, broker_url: str, coordinator_key: str, device_key: Path, model_id: str,
                 device_id: str | None = None, coordinator_id: str = "coordinator", **kw: object) -> LearningConfig:
        """From mqtt://DEVICE:PASSWORD@host:port and the coordinator's key (read_coordinator_key); the device id
        is the broker user unless given."""
        try:
            broker = BrokerConfig.from_url(broker_url)
        except SdaError as exc:
            raise AssistantError(str(exc)) from exc
        name = device_id or broker.username
        if not name:
            raise AssistantError(f"broker URL {broker_url!r} names no user: give the device's login"
                                 " (mqtt://DEVICE:PASSWORD@host:port) or --device-id")
        return cls(name, broker, coordinator_id, read_coordinator_key(coordinator_key), device_key, model_id,
                   **kw)  # type: ignore[arg-type]


class DeviceLearning:
    """The participant client and the release listener of one device (see the module doc)."""

    def __init__(self, store: Store, versions: ModelVersions, reload: Callable[[], str], config: LearningConfig,
                 on_outcome: Callable[[Outcome], None] | None = None):
        self.store, self.versions, self.config = store, versions, config
        current = versions.current
        # The head and clip norm are read from the installed version at each announce: after a release or a
        # rollback the next round's gradient is taken at the head the service runs.
        # One participant client answers both: learning announces here, the daily analytics ones (sent only
        # when the owner opted in to analytics, checked at each announce) through the fallback.
        self.analytics = AnalyticsClient(store)
        self.learning = LearningClient(store, config.model_id, head=lambda: model_head(current),
                                       clip_norm=lambda: model_clip_norm(current),
                                       policy=LearningPolicy(min_new_labels=config.min_new_labels),
                                       fallback=self.analytics.provide)
        self.participant: ParticipantClient = self.learning.participant_client(
            ParticipantConfig(config.device_id, config.broker, config.coordinator_id, config.coordinator_sign_key,
                              ParticipantPolicy(min_participants=config.min_crowd)),
            load_or_create_identity(config.device_key), ParticipationLog(participation_log_path(store.root)))
        installer = ReleaseInstaller(versions, store, Trust(config.coordinator_id, config.coordinator_sign_key),
                                     config.model_id, reload)
        self.listener = ReleaseListener(installer, on_outcome)
        self._releases = Transport(f"{config.device_id}-releases", config.broker, self.listener.on_message,
                                   manual_ack=True)
        self._started: list[Callable[[], None]] = []

    def start(self, timeout_s: float = 15.0) -> DeviceLearning:
        """Connect both; AssistantError (and nothing left running) when the broker cannot be reached."""
        try:
            self.listener.start()
            self._started.append(self.listener.stop)
            self._releases.start(timeout_s)
            self._started.append(self._releases.stop)
            self._releases.subscribe(self.listener.topic)
            self.participant.start(timeout_s)
            self._started.append(self.participant.stop)
        except (SdaError, OSError) as exc:
            self.stop()
            raise _broker_error("learning", self.config, exc) from exc
        log.info("learning: %s takes part in rounds of %s (crowds of %d or more) and installs its releases",
                 self.config.device_id, self.config.model_id, self.config.min_crowd)
        return self

    def stop(self) -> None:
        """Disconnect (the last started first); a release being installed is finished first."""
        while self._started:
            self._started.pop()()


def _broker_error(what: str, config: LearningConfig, exc: Exception) -> AssistantError:
    """BrokerOffline when no broker answered (worth trying again), else BrokerRefused."""
    kind = BrokerOffline if isinstance(exc, BrokerUnreachable) else BrokerRefused
    return kind(f"{what}: cannot reach the broker {config.broker.host}:{config.broker.port} as {config.device_id}:"
                f" {exc}")


def connection_for(learning_opt_in: bool, analytics_opt_in: bool) -> str | None:
    """Which connection `assistant run` starts for the owner's opt-ins: "learning" (one participant client for
    learning rounds, releases and, when opted in, the daily analytics), "analytics" (a participant client for
    the daily analytics alone, no releases), or None (opted out of both: no connection at all)."""
    if learning_opt_in:
        return "learning"
    return "analytics" if analytics_opt_in else None


class DeviceAnalytics:
    """An analytics-only participant client (the owner opted in to analytics, not to learning): answers the daily
    analytics announces and nothing else, with the same identity, login and participation log as DeviceLearning."""

    def __init__(self, store: Store, config: LearningConfig):
        self.config = config
        self.analytics = AnalyticsClient(store)
        self.participant: ParticipantClient = self.analytics.participant_client(
            ParticipantConfig(config.device_id, config.broker, config.coordinator_id, config.coordinator_sign_key,
                              ParticipantPolicy(min_participants=config.min_crowd)),
            load_or_create_identity(config.device_key), ParticipationLog(participation_log_path(store.root)))

    def start(self, timeout_s: float = 15.0) -> DeviceAnalytics:
        """Connect; AssistantError when the broker cannot be reached."""
        try:
            self.participant.start(timeout_s)
        except (SdaError, OSError) as exc:
            self.participant.stop()
            raise _broker_error("analytics", self.config, exc) from exc
        log.info("analytics: %s answers the daily analytics announces (not opted in to learning)",
                 self.config.device_id)
        return self

    def stop(self) -> None:
        """Disconnect."""
        self.participant.stop()


#: How long stop() waits for a try under way: a DeviceLearning start connects two transports of 15 s each.
STOP_WAIT_S = 40.0


class StartWhenReachable:
    """Start a connection (a DeviceLearning or DeviceAnalytics, made afresh by `make` for each try) now if its
    broker answers, or else keep trying from a thread of its own, the pause doubling from `first_pause_s` up to
    `max_pause_s`, until it connects or `stop()`: a wake-word device listens from the start and joins rounds once
    its broker is back (a power cut that brings the Pi up before the router, a broker being restarted).

    A broker that answers and refuses the login raises at once (BrokerRefused), as a bad configuration should;
    met during the retries, it ends them with one logged error (the service keeps listening)."""

    def __init__(self, make: Callable[[], DeviceLearning | DeviceAnalytics], what: str,
                 on_unreachable: Callable[[], None] | None = None, first_pause_s: float = 5.0,
                 max_pause_s: float = 300.0):
        self.make, self.what, self.on_unreachable = make, what, on_unreachable
        self.first_pause_s, self.max_pause_s = first_pause_s, max_pause_s
        self.connection: DeviceLearning | DeviceAnalytics | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> StartWhenReachable:
        try:
            self.connection = self.make().start()
        except BrokerOffline as exc:
            self._unreachable(exc)
            self._thread = threading.Thread(target=self._retry, name=f"{self.what}-connect", daemon=True)
            self._thread.start()
        return self

    def _unreachable(self, exc: BrokerOffline) -> None:
        log.warning("%s; listening anyway, and trying again in the background", exc)
        if self.on_unreachable is not None:
            self.on_unreachable()

    def _retry(self) -> None:
        pause = self.first_pause_s
        while not self._stopping.wait(pause):
            try:
                connection = self.make().start()
            except BrokerOffline as exc:
                pause = min(2 * pause, self.max_pause_s)
                log.info("%s; next try in %.0f s", exc, pause)
                continue
            except BrokerRefused as exc:  # the broker answered and refused: a configuration to fix
                log.error("%s; no more tries until the service restarts", exc)
                return
            except Exception:  # e.g. the store's disk is full (StoreError): keep listening, and trying
                pause = min(2 * pause, self.max_pause_s)
                log.exception("%s: could not start; next try in %.0f s", self.what, pause)
                continue
            with self._lock:
                if self._stopping.is_set():  # stop() came while this try was connecting
                    connection.stop()
                    return
                self.connection = connection
            log.info("%s: connected after the broker came back", self.what)
            return

    def stop(self) -> None:
        """Stop trying, and disconnect what did connect."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("%s: a connection attempt is still under way after %.0f s; leaving it", self.what,
                            STOP_WAIT_S)
        with self._lock:
            if self.connection is not None:
                self.connection.stop()
                self.connection = None
