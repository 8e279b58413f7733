"""The device's configuration: one YAML file mapped to one frozen dataclass tree, checked once at start-up.

Every key has a default, so an empty file (or none) is a working configuration: the microphone, the shipped
model, the store in the user's data folder, learning and analytics off. Checking collects every problem at
once, and each names the key, the value found and what is allowed; a key the schema does not know is refused
(a misspelt `treshold` must not silently fall back to a default). Paths must be absolute: a service's working
directory is not the one the owner edited the file from.

The CLI's flags override the file's values (`assistant run --threshold 0.7` wins over `model.threshold`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import AssistantError

ENV_VAR = "ASSISTANT_CONFIG"  # the installed `assistant` wrapper sets it to /etc/assistant/assistant.yaml
MAX_BYTES = 1 << 20  # a configuration is a few hundred bytes; refuse to parse a megabyte of anything

LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(AssistantError):
    """A configuration that does not fit the schema; `problems` lists every one, each naming its key."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, tuple(problems)
        head = f"config {source}: " + ("1 problem" if len(problems) == 1 else f"{len(problems)} problems")
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           what: str = "") -> dict:
    """Field metadata: the value's allowed interval, and how to say it."""
    return {"range": (lo, hi, lo_open, hi_open), "what": what}


@dataclass(frozen=True)
class AudioConfig:
    """Where the sound comes from."""

    device: str | None = None  # a sounddevice input's name or index (`python -m sounddevice`); null: the default
    input: Path | None = None  # a WAV/FLAC file instead of the microphone (for trying it without a Pi)
    realtime: bool = False  # play `input` at the speed of real time instead of as fast as possible


@dataclass(frozen=True)
class ModelConfig:
    """Which model listens, and how its detector decides."""

    dir: Path | None = None  # a model directory (card.json, backbone.onnx, head.npz); null: shipped hey_snips
    threshold: float | None = field(default=None, metadata=_range(0, 1, lo_open=True, hi_open=True,
                                                                    what="a probability strictly between 0 and 1,"
                                                                    " or null for the model card's"))
    patience: int = field(default=1, metadata=_range(1, 50, what="frames above the threshold, 1 to 50"))
    refractory_s: float = field(default=2.0, metadata=_range(0, 60, what="seconds, 0 to 60"))
    pre_roll_s: float = field(default=2.0, metadata=_range(0, 9.92, what="seconds, 0 to 9.92 (the ring's 10 s"
                                                                          " less one frame)"))
    verifier: bool = True  # the owner's personal verifier vets each detection


@dataclass(frozen=True)
class StoreConfig:
    """Where detections, clips, labels and keys are kept."""

    dir: Path | None = None  # null: $XDG_DATA_HOME/assistant or ~/.local/share/assistant
    control_socket: Path | None = None  # null: control.sock inside the store


@dataclass(frozen=True)
class HermesConfig:
    """The local bus detections are announced on (Snips/Rhasspy Hermes topics)."""

    url: str | None = field(default=None, metadata={"url": True})  # mqtt://host:port; null: none


@dataclass(frozen=True)
class LearningConfig:
    """How the device reaches the developer's coordinator. Nothing is sent unless the owner opts in
    (`assistant learning opt-in`, `assistant analytics opt-in`); these only say where to."""

    credentials: Path | None = None  # the file `sda admin add-device` made (id, broker login, coordinator keys)
    broker: str | None = field(default=None, metadata={"url": True})  # replaces the credentials' host and port
    coordinator_key: str | None = None  # without credentials: 64 hex digits, or a file holding them
    coordinator_id: str = "coordinator"
    device_id: str | None = None  # without credentials: default the broker user
    device_key: Path | None = None  # null: device.key inside the store (created on first use, mode 0600)
    model_id: str | None = None  # null: the model's wake word ("hey_snips")
    min_crowd: int | None = field(default=None, metadata=_range(2, None, what="devices, at least 2 (null: the"
                                                                             " built-in 100)"))

    @property
    def enabled(self) -> bool:
        """Whether the device is told where learning happens at all."""
        return self.credentials is not None or self.broker is not None or self.coordinator_key is not None


@dataclass(frozen=True)
class LogConfig:
    """How much the service writes to its log (the journal, under systemd)."""

    level: LogLevel = "info"


@dataclass(frozen=True)
class Config:
    """The whole device configuration (see the module doc); `source` is the file it came from, if any."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    hermes: HermesConfig = field(default_factory=HermesConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str | None = field(default=None, compare=False, metadata={"internal": True})

    def as_dict(self) -> dict:
        """The configuration as plain YAML-able values (paths as strings), without `source`."""
        return _plain(self)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("internal")}
    return str(obj) if isinstance(obj, Path) else obj


def load_config(path: Path | str | None) -> Config:
    """The configuration in `path`; the defaults for None. ConfigError listing every problem otherwise."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError(str(path), [f"the file is larger than {MAX_BYTES:,} bytes: not a configuration"])
    return parse_config(raw, str(path))


def parse_config(text: str | bytes, source: str = "<text>") -> Config:
    """The configuration in YAML `text` (see load_config)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(source, [f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(source, [f"not text: {exc}"]) from exc
    if data is None:
        data = {}
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(source, problems)
    return dataclasses.replace(cfg, source=source)


def config_path(explicit: Path | None, env: Mapping[str, str] = os.environ) -> Path | None:
    """The file to read: `--config`, else $ASSISTANT_CONFIG (set by the installed wrapper), else none."""
    if explicit is not None:
        return explicit
    value = env.get(ENV_VAR, "")
    return Path(value) if value else None


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """An instance of dataclass `cls` from mapping `data`; problems appended (the default kept for a bad value)."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, Mapping):
        problems.append(f"{where}: got {_show(data)}; need a mapping of keys to values")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{prefix}{key}: unknown key{hint}; allowed here: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, data[name], f"{prefix}{name}.", problems)
            continue
        ok, value, allowed = _convert(kind, data[name], f.metadata)
        if ok:
            values[name] = value
        else:
            problems.append(f"{prefix}{name}: got {_show(data[name])}; need {allowed}")
    return cls(**values)


def _convert(kind: Any, value: Any, meta: Mapping) -> tuple[bool, Any, str]:
    """(fits, the converted value, what is allowed) for one leaf of type `kind`."""
    args = typing.get_args(kind)
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else kind
    ok, out, allowed = _convert_base(base, value, meta)
    if optional:
        allowed += "" if "null" in allowed else " or null"
        if value is None:
            return True, None, allowed
    return ok, out, allowed


def _convert_base(base: Any, value: Any, meta: Mapping) -> tuple[bool, Any, str]:
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        return value in choices, value, "one of " + ", ".join(repr(c) for c in choices)
    if base is bool:
        return isinstance(value, bool), value, "true or false"
    if base is Path:
        ok = isinstance(value, str) and os.path.isabs(value) and "\0" not in value
        return ok, Path(value) if ok else None, "an absolute path"
    if base is str:
        if meta.get("url"):
            ok = isinstance(value, str) and value.split("://", 1)[0] in ("mqtt", "mqtts") and "://" in value
            return ok, value, "a broker URL, mqtt://[user:password@]host:port or mqtts://..."
        # YAML reads a bare 0 or 1 as a number: an audio device index is still a name here
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        return ok and str(value) != "", str(value) if ok else None, "a non-empty string"
    if base in (int, float):
        lo, hi, lo_open, hi_open = meta.get("range", (None, None, False, False))
        allowed = meta.get("what") or ("a whole number" if base is int else "a number")
        numeric = isinstance(value, int) or (base is float and isinstance(value, float))
        if isinstance(value, bool) or not numeric or (isinstance(value, float) and not math.isfinite(value)):
            return False, None, allowed
        inside = ((lo is None or (value > lo if lo_open else value >= lo))
                  and (hi is None or (value < hi if hi_open else value <= hi)))
        return inside, base(value) if inside else None, allowed  # float(10**400) would overflow
    raise TypeError(f"config schema: no converter for {base!r}")  # a schema bug, found by the tests


#: repr with bounded work: YAML aliases make a 1 KB file a list of 9**9 items, whose whole repr never ends.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 8, 8
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = 80


def _show(value: Any) -> str:
    """A value as the owner wrote it, short enough for one line."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def override(config: Config, flags: Mapping[str, Mapping[str, Any]]) -> Config:
    """`config` with the command line's values on top: {section: {key: value}}, None meaning "not given"."""
    sections = {}
    for section, values in flags.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            sections[section] = dataclasses.replace(getattr(config, section), **given)
    return dataclasses.replace(config, **sections)


def default_store_dir(env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_DATA_HOME/assistant when that is set to an absolute path (as the XDG spec requires), else
    ~/.local/share/assistant."""
    xdg = env.get("XDG_DATA_HOME", "")
    return Path(xdg) / "assistant" if os.path.isabs(xdg) else Path.home() / ".local" / "share" / "assistant"


def store_dir(config: Config, env: Mapping[str, str] = os.environ) -> Path:
    """The store folder: `store.dir`, else default_store_dir."""
    return config.store.dir if config.store.dir is not None else default_store_dir(env)
