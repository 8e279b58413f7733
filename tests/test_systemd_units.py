"""The systemd units in systemd/: valid for systemd itself, sandboxed, and wired to the right commands.

Real tools only: `systemd-analyze verify`, `systemd-analyze security --offline=yes` and
`systemd-sysusers --root=...` (none of them needs a running systemd).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNITS = ["assistant.service", "assistant-clerk.service", "sda-coordinator.service"]
# The venv running these tests holds the same console scripts the units start from /opt.
VENV_BIN = Path(sys.executable).parent
INSTALLED_BIN = "/opt/assistant/venv/bin/"
MAX_EXPOSURE = 4.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install systemd", pytrace=False)
    return path


def _settings(unit: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file (comments and section headers dropped), every value kept."""
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _local_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's scripts (verify wants the binary to exist)."""
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED_BIN in text
    for script in ("assistant", "sda"):
        assert (VENV_BIN / script).is_file(), f"{VENV_BIN / script} missing: pip install -e . first"
    path = tmp_path / unit
    path.write_text(text.replace(INSTALLED_BIN, f"{VENV_BIN}/"))
    return path


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("systemd-analyze"), "verify", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_cleanly(unit, tmp_path):
    result = _verify(_local_copy(unit, tmp_path))
    assert result.returncode == 0, result.stderr
    # systemd-analyze verify reports unknown keys, unknown sections and unparsable values on
    # stderr but still exits 0, so stderr must be empty. Nothing is filtered: on Debian 12's
    # systemd 252 in a container it prints nothing for these units (it does not check that
    # the users exist, and it does not mind a missing mosquitto.service in After=).
    assert result.stderr.strip() == ""


def test_verify_would_catch_a_typo(tmp_path):
    """The check above is only worth something if verify complains about a bad key or section."""
    path = _local_copy("assistant.service", tmp_path)
    path.write_text(path.read_text().replace("UMask=0077", "UMask=0077\nProtectSytem=strict") + "[Bogus]\n")
    result = _verify(path)
    assert "Unknown key" in result.stderr
    assert "Unknown section" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_level(unit, tmp_path):
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(_local_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_device_unit_contract():
    s = _settings("assistant.service")
    # The service speaks sd_notify itself (assistant/notify.py).
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecStart"] == [f"{INSTALLED_BIN}assistant run --config /etc/assistant/assistant.yaml"]
    assert s["User"] == ["assistant"]
    assert s["Group"] == ["assistant"]
    assert s["StateDirectory"] == ["assistant"]
    assert s["StateDirectoryMode"] == ["0750"]
    assert s["ConfigurationDirectory"] == ["assistant"]
    assert s["UMask"] == ["0077"]
    assert "network-online.target" in " ".join(s["Wants"])
    # The microphone: group audio owns /dev/snd/*, and the device ACL must let ALSA through.
    assert s["SupplementaryGroups"] == ["audio"]
    assert s["DevicePolicy"] == ["closed"]
    assert "char-alsa rw" in s["DeviceAllow"]
    # These break ALSA (PrivateDevices hides /dev/snd, PrivateUsers unmaps the audio group) or
    # cffi callbacks (MemoryDenyWriteExecute).
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "PrivateUsers"):
        assert s.get(key, ["no"]) == ["no"], key
    assert s["CapabilityBoundingSet"] == [""]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]


def test_clerk_unit_contract():
    s = _settings("assistant-clerk.service")
    assert s["Type"] == ["simple"]
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["assistant"]
    assert s["StateDirectory"] == ["assistant-clerk"]
    assert s["ConfigurationDirectory"] == ["assistant"]
    assert s["ExecStart"] == [
        f"{INSTALLED_BIN}sda clerk --credentials /etc/assistant/clerk.yaml --state /var/lib/assistant-clerk"
    ]
    assert s["PrivateDevices"] == ["yes"]
    assert s.get("MemoryDenyWriteExecute", ["no"]) == ["no"]


def test_coordinator_unit_contract():
    s = _settings("sda-coordinator.service")
    assert s["User"] == ["sda"]
    assert s["StateDirectory"] == ["sda-coordinator"]
    assert s["ConfigurationDirectory"] == ["sda-coordinator"]
    assert s["EnvironmentFile"] == ["-/etc/sda-coordinator/coordinator.env"]
    (exec_start,) = s["ExecStart"]
    argv = exec_start.split()
    assert argv[:2] == [f"{INSTALLED_BIN}assistant", "coordinator"]
    assert argv[-1] == "$COORDINATOR_ARGS"
    # The broker password lives in a file, never in argv (visible in ps).
    assert argv[argv.index("--broker-file") + 1] == "/etc/sda-coordinator/broker.url"
    assert "--broker" not in argv
    assert "mqtt://" not in exec_start
    assert argv[argv.index("--state") + 1] == "/var/lib/sda-coordinator"
    assert argv[argv.index("--model") + 1] == "/opt/assistant/models/hey_snips"
    assert "--analytics" in argv
    assert s["PrivateDevices"] == ["yes"]
    assert s.get("MemoryDenyWriteExecute", ["no"]) == ["no"]


def _table(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines() if line}


def test_sysusers_creates_the_users(tmp_path):
    """Apply the sysusers.d file to an empty root that, like Debian, already has group audio."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("audio:x:29:\n")
    conf = tmp_path / "assistant.conf"
    shutil.copy(SYSTEMD / "sysusers.d" / "assistant.conf", conf)
    result = subprocess.run(
        [_tool("systemd-sysusers"), f"--root={root}", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    passwd = _table(root / "etc" / "passwd")
    group = _table(root / "etc" / "group")
    assert passwd["assistant"][5] == "/var/lib/assistant"
    assert passwd["sda"][5] == "/var/lib/sda-coordinator"
    for user in ("assistant", "sda"):
        uid = int(passwd[user][2])
        assert 0 < uid < 1000, f"{user} must be a system user"
        assert user in group, f"group {user} missing"
        assert passwd[user][6].endswith("nologin")
    assert group["audio"][3].split(",") == ["assistant"]
    assert group["audio"][2] == "29"  # the existing group is reused, not created again
