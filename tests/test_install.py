"""systemd/install.sh and systemd/uninstall.sh, run for real into a DESTDIR (no mocks).

The installer runs against a copy of the checkout in tmp_path, never /work/main itself, so the
tests can edit sources and the example config without touching the repository.

How the package gets built offline and fast: the installer makes a fresh venv with the base
Python of the venv running these tests (sys._base_executable, Python 3.11). Such a venv is seeded
by ensurepip with setuptools 65/66 and no `wheel`, which cannot build the project (it asks for
setuptools>=68, and old setuptools needs `wheel` for bdist_wheel); with build isolation pip would
have to download setuptools. So the tests pass PIP_INSTALL_OPTS="--no-deps --no-build-isolation
--no-index" and put this test venv's own setuptools (84, bdist_wheel built in) on PYTHONPATH
through a directory of three symlinks. PYTHONPATH reaches pip's build subprocess and nothing is
downloaded. One pip install takes about 1 s, the venv about 2.5 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import setuptools

from sda.crypto import Identity

REPO = Path(__file__).resolve().parent.parent
MODELS = ["hey_snips", "hey_jarvis"]
MODEL_FILES = ["backbone.onnx", "head.npz", "card.json", "MODEL_CARD.md", "training.json"]
UNITS = ["assistant.service", "assistant-clerk.service", "sda-coordinator.service"]
PREFIX = "/opt/assistant"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


@pytest.fixture
def src(tmp_path) -> Path:
    """A copy of what the installer reads from a checkout."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "checkpoint.pt")
    for name in ("sda", "assistant", "tui", "systemd"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for model in MODELS:
        shutil.copytree(REPO / "models" / model, src / "models" / model, ignore=ignore)
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy2(REPO / name, src / name)
    example = src / "systemd" / "assistant.yaml"
    if not example.exists():  # written by another change; a stand-in keeps this test independent of it
        example.write_text("# example configuration\n")
    return src


@pytest.fixture
def build_tools(tmp_path) -> Path:
    """setuptools from the test venv, for pip's --no-build-isolation build (see the module docstring)."""
    site = Path(setuptools.__file__).resolve().parent.parent
    tools = tmp_path / "build-tools"
    tools.mkdir()
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):
        (tools / name).symlink_to(site / name)
    return tools


def run(script: str, src: Path, destdir: Path, build_tools: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DESTDIR": str(destdir),
        "PYTHON": BASE_PYTHON,
        "PIP_INSTALL_OPTS": "--no-deps --no-build-isolation --no-index -q",
        "SRC": str(src),
        "PYTHONPATH": str(build_tools),
    }
    env.pop("PREFIX", None)
    result = subprocess.run(
        ["bash", str(src / "systemd" / script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: mode, size, mtime and (files) sha256 or (links) target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                extra = ""
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, extra)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_installed_tree(dest: Path, src: Path) -> None:
    root = dest / PREFIX.lstrip("/")
    for script in ("assistant", "sda"):
        exe = root / "venv" / "bin" / script
        assert exe.is_file() and os.access(exe, os.X_OK), exe
    (site,) = (root / "venv" / "lib").glob("python3*/site-packages")
    assert (site / "sda" / "crypto.py").read_bytes() == (src / "sda" / "crypto.py").read_bytes()
    assert (root / ".installed-from").read_text().strip()

    for model in MODELS:
        assert sorted(p.name for p in (root / "models" / model).iterdir()) == sorted(MODEL_FILES)
        for name in MODEL_FILES:
            installed = root / "models" / model / name
            assert installed.read_bytes() == (REPO / "models" / model / name).read_bytes()
            assert mode(installed) == 0o644

    for unit in UNITS:
        installed = dest / "etc/systemd/system" / unit
        assert installed.read_text() == (src / "systemd" / unit).read_text()
        assert mode(installed) == 0o644
    sysusers = dest / "usr/lib/sysusers.d/assistant.conf"
    assert sysusers.read_text() == (src / "systemd/sysusers.d/assistant.conf").read_text()

    wrapper = dest / "usr/local/bin/assistant"
    assert mode(wrapper) == 0o755
    lines = wrapper.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    assert f"{PREFIX}/venv/bin/assistant" in lines[1]
    assert 'ASSISTANT_CONFIG="${ASSISTANT_CONFIG:-/etc/assistant/assistant.yaml}"' in lines[1]
    sda = dest / "usr/local/bin/sda"
    assert mode(sda) == 0o755
    assert f"exec {PREFIX}/venv/bin/sda " in sda.read_text()
    assert "ASSISTANT_CONFIG" not in sda.read_text()

    config = dest / "etc/assistant/assistant.yaml"
    assert config.read_bytes() == (src / "systemd/assistant.yaml").read_bytes()
    assert mode(config) == 0o640
    for directory in ("etc/assistant", "etc/sda-coordinator", "var/lib/assistant", "var/lib/assistant-clerk"):
        assert mode(dest / directory) == 0o750, directory

    for key in ("var/lib/assistant/device.key", "var/lib/assistant-clerk/clerk.key"):
        raw = (dest / key).read_bytes()
        assert len(raw) == 64
        assert mode(dest / key) == 0o600
        Identity.from_bytes(raw)  # a valid Ed25519 seed + X25519 scalar
    assert (dest / "var/lib/assistant/device.key").read_bytes() != (
        dest / "var/lib/assistant-clerk/clerk.key"
    ).read_bytes()
    # No temporary key files left behind.
    assert sorted(p.name for p in (dest / "var/lib/assistant").iterdir()) == ["device.key"]


@pytest.mark.slow
def test_install_is_idempotent_and_uninstall_keeps_owner_data(src, build_tools, tmp_path):
    dest = tmp_path / "dest"
    first = run("install.sh", src, dest, build_tools)
    assert "created key" in first.stdout
    assert "DESTDIR is set" in first.stdout
    assert_installed_tree(dest, src)

    before = snapshot(dest)
    second = run("install.sh", src, dest, build_tools)
    assert snapshot(dest) == before
    assert "unchanged" in second.stdout
    # One indented line per change: there must be none.
    assert [line for line in second.stdout.splitlines() if line.startswith("  ")] == [], second.stdout

    # The owner's edits and an existing key survive a re-install.
    config = dest / "etc/assistant/assistant.yaml"
    config.write_text("# edited by the owner\n")
    own_key = Identity.generate().to_bytes()
    (dest / "var/lib/assistant/device.key").write_bytes(own_key)
    (dest / "var/lib/assistant/device.key").chmod(0o644)  # and a wrong mode gets put right
    third = run("install.sh", src, dest, build_tools)
    assert [line.strip() for line in third.stdout.splitlines() if line.startswith("  ")] == [
        f"mode 0600: {dest}/var/lib/assistant/device.key"
    ]
    assert mode(dest / "var/lib/assistant/device.key") == 0o600
    assert config.read_text() == "# edited by the owner\n"
    assert (dest / "var/lib/assistant/device.key").read_bytes() == own_key

    # A source change re-runs pip (and only that); the models' mtimes stay put.
    model_file = dest / PREFIX.lstrip("/") / "models/hey_snips/backbone.onnx"
    model_mtime = model_file.stat().st_mtime_ns
    with (src / "sda" / "crypto.py").open("a") as f:
        f.write("# touched by test_install\n")
    fourth = run("install.sh", src, dest, build_tools)
    assert "installed the package" in fourth.stdout
    (site,) = (dest / PREFIX.lstrip("/") / "venv/lib").glob("python3*/site-packages")
    assert (site / "sda/crypto.py").read_text().endswith("# touched by test_install\n")
    assert model_file.stat().st_mtime_ns == model_mtime

    # uninstall: programs gone, the owner's configuration and keys kept; twice is fine.
    run("uninstall.sh", src, dest, build_tools)
    again = run("uninstall.sh", src, dest, build_tools)
    assert "unchanged" in again.stdout
    assert not (dest / PREFIX.lstrip("/")).exists()
    for unit in UNITS:
        assert not (dest / "etc/systemd/system" / unit).exists()
    for gone in ("usr/local/bin/assistant", "usr/local/bin/sda", "usr/lib/sysusers.d/assistant.conf"):
        assert not (dest / gone).exists(), gone
    assert config.read_text() == "# edited by the owner\n"
    assert (dest / "var/lib/assistant/device.key").read_bytes() == own_key
    assert len((dest / "var/lib/assistant-clerk/clerk.key").read_bytes()) == 64

    run("uninstall.sh", src, dest, build_tools, "--purge")
    for gone in ("etc/assistant", "etc/sda-coordinator", "var/lib/assistant", "var/lib/assistant-clerk"):
        assert not (dest / gone).exists(), gone
    assert "unchanged" in run("uninstall.sh", src, dest, build_tools, "--purge").stdout


@pytest.mark.slow
def test_git_checkout_hash_ignores_build_debris(src, build_tools, tmp_path):
    """In a git checkout the stamp covers tracked and untracked-but-not-ignored package files."""
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "add", "-A"], check=True)
    dest = tmp_path / "dest"
    run("install.sh", src, dest, build_tools)
    stamp = dest / PREFIX.lstrip("/") / ".installed-from"
    first_hash = stamp.read_text()

    # Byte-code and build output (ignored by .gitignore) do not count as a source change.
    (src / "sda" / "__pycache__").mkdir(exist_ok=True)
    (src / "sda" / "__pycache__" / "crypto.cpython-311.pyc").write_bytes(b"junk")
    (src / "build").mkdir()
    (src / "build" / "junk.py").write_text("x = 1\n")
    assert "unchanged" in run("install.sh", src, dest, build_tools).stdout

    # A new, not yet committed module does.
    (src / "sda" / "brand_new.py").write_text("VALUE = 1\n")
    out = run("install.sh", src, dest, build_tools).stdout
    assert "installed the package" in out
    assert stamp.read_text() != first_hash
    (site,) = (dest / PREFIX.lstrip("/") / "venv/lib").glob("python3*/site-packages")
    assert (site / "sda" / "brand_new.py").read_text() == "VALUE = 1\n"


def test_real_install_needs_root(tmp_path):
    """Without DESTDIR the installer refuses to run as an ordinary user, before touching anything."""
    # A copy nobody can read: the checkout (and pytest's tmp_path) may sit under a folder only root may enter.
    shared = Path(tempfile.mkdtemp(prefix="install-test-"))
    try:
        (shared / "systemd").mkdir()
        shutil.copy(REPO / "systemd" / "install.sh", shared / "systemd" / "install.sh")
        (shared / "pyproject.toml").write_text("")
        for p in (shared, shared / "systemd", shared / "systemd" / "install.sh", shared / "pyproject.toml"):
            p.chmod(0o755)
        _refused(shared / "systemd" / "install.sh", shared)
    finally:
        shutil.rmtree(shared)


def _refused(script: Path, cwd: Path) -> None:
    cmd = ["bash", str(script)]
    if os.geteuid() == 0:  # drop to nobody to see the refusal
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "PREFIX", "SRC")}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=cwd)
    assert result.returncode != 0
    assert "must run as root" in result.stderr
    assert "DESTDIR" in result.stderr


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_help_and_bad_arguments(script):
    path = REPO / "systemd" / script
    assert os.access(path, os.X_OK), f"{path} must be executable"
    shown = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert "Usage: sudo systemd/" in shown.stdout
    for var in ("DESTDIR", "PREFIX"):
        assert var in shown.stdout
    bad = subprocess.run([str(path), "--frobnicate"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "unknown argument: --frobnicate" in bad.stderr
