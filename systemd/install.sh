#!/usr/bin/env bash
# Install the private wake-word assistant as systemd services. See systemd/README.md.
set -euo pipefail
set -o errtrace  # the ERR trap below also fires inside functions

usage() {
    cat <<'EOF'
Usage: sudo systemd/install.sh [--help]

Installs the assistant into a virtual environment under PREFIX, copies the shipped models,
the systemd units, the sysusers.d file, the `assistant` and `sda` commands, an example
/etc/assistant/assistant.yaml (only if there is none) and creates the device and clerk keys
(only if there are none). Running it again changes nothing unless the sources changed.
It does not enable or start any service.

Environment:
  DESTDIR           stage everything below this directory instead of / (no users, no
                    ownership changes, no systemctl); default: empty (a real install, as root)
  PREFIX            where the venv and the models go; default: /opt/assistant
  PYTHON            the Python (>= 3.11) that creates the venv; default: python3
  PIP_INSTALL_OPTS  extra options for `pip install`; default: empty
  SRC               the source checkout; default: the parent directory of this script
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/opt/assistant}"
PYTHON="${PYTHON:-python3}"
PIP_INSTALL_OPTS="${PIP_INSTALL_OPTS:-}"
SRC="${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

[[ "$PREFIX" == /* && "$PREFIX" != / ]] || die "PREFIX must be an absolute path other than /, got '$PREFIX'"
PREFIX="${PREFIX%/}"
[[ -f "$SRC/pyproject.toml" ]] || die "SRC=$SRC is not the assistant's source checkout (no pyproject.toml)"
SRC="$(cd "$SRC" && pwd)"

if [[ -n "$DESTDIR" ]]; then
    mkdir -p "$DESTDIR" || die "cannot create DESTDIR=$DESTDIR"
    DESTDIR="$(cd "$DESTDIR" && pwd)"
    [[ "$DESTDIR" != / ]] || DESTDIR=""
fi
REAL=0
if [[ -z "$DESTDIR" ]]; then
    REAL=1
    [[ "$(id -u)" -eq 0 ]] || die "a real install must run as root: sudo $0 (or set DESTDIR=/some/dir to stage the files there)"
fi

trap 'echo "install.sh: error: failed at line $LINENO (exit $?)" >&2' ERR
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

CHANGES=0
changed() {
    echo "  $*"
    CHANGES=$((CHANGES + 1))
}

# ensure_mode PATH MODE: chmod PATH to MODE (octal) unless it already has it.
ensure_mode() {
    local cur
    cur="$(stat -c %a "$1")"
    if (( 8#$cur != 8#$2 )); then
        chmod "$2" "$1"
        changed "mode $2: $1"
    fi
}

# ensure_owner PATH USER:GROUP: chown only when different (a real install only).
ensure_owner() {
    (( REAL )) || return 0
    if [[ "$(stat -c %U:%G "$1")" != "$2" ]]; then
        chown "$2" "$1"
        changed "owner $2: $1"
    fi
}

# ensure_dir DIR MODE
ensure_dir() {
    if [[ ! -d "$1" ]]; then
        mkdir -p "$1"
        chmod "$2" "$1"
        changed "created $1/"
    else
        ensure_mode "$1" "$2"
    fi
}

# install_file SRCFILE DEST MODE: copy only when the content differs, so mtimes stay put.
install_file() {
    local src="$1" dest="$2" mode="$3"
    [[ -f "$src" ]] || die "missing source file: $src"
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        ensure_mode "$dest" "$mode"
        return 0
    fi
    [[ -d "$(dirname "$dest")" ]] || ensure_dir "$(dirname "$dest")" 0755
    install -m "$mode" "$src" "$dest"
    changed "installed $dest"
}

# source_hash: sha256 over the files that make up the Python package (names and contents).
PKG_PATHS=()
for p in pyproject.toml README.md sda assistant tui; do
    if [[ -e "$SRC/$p" ]]; then PKG_PATHS+=("$p"); fi
done
list_sources() {
    if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # Tracked and untracked-but-not-ignored files; a tracked file deleted in the tree is skipped.
        git -C "$SRC" ls-files -z --cached --others --exclude-standard -- "${PKG_PATHS[@]}" |
            while IFS= read -r -d '' f; do
                if [[ -f "$SRC/$f" ]]; then printf '%s\0' "$f"; fi
            done
    else
        (cd "$SRC" && find "${PKG_PATHS[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0)
    fi
}
source_hash() {
    list_sources | sort -z -u | (cd "$SRC" && xargs -0 -r sha256sum --) | sha256sum | cut -d' ' -f1
}

echo "Installing from $SRC into ${DESTDIR:-/} (PREFIX=$PREFIX)"

# --- 1. the venv and the package --------------------------------------------------------------
ROOT="$DESTDIR$PREFIX"
VENV="$ROOT/venv"
STAMP="$ROOT/.installed-from"
ensure_dir "$ROOT" 0755
force_pip=0
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv $VENV' failed (on Debian: apt-get install python3-venv)"
    changed "created venv $VENV"
    force_pip=1
fi
[[ -x "$VENV/bin/assistant" && -x "$VENV/bin/sda" ]] || force_pip=1
HASH="$(source_hash)"
[[ -n "$HASH" ]] || die "could not hash the sources in $SRC"
if (( force_pip )) || [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "$HASH" ]]; then
    # Build from a clean copy so pip leaves no build/ or *.egg-info (owned by root) in the checkout.
    mkdir "$WORK/src"
    tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - "${PKG_PATHS[@]}" | tar -C "$WORK/src" -xf -
    read -r -a pip_opts <<<"$PIP_INSTALL_OPTS"
    "$VENV/bin/python" -m pip install --disable-pip-version-check "${pip_opts[@]}" "$WORK/src" ||
        die "pip install into $VENV failed"
    [[ -x "$VENV/bin/assistant" ]] || die "pip ran but $VENV/bin/assistant is missing"
    printf '%s\n' "$HASH" >"$WORK/stamp"
    install_file "$WORK/stamp" "$STAMP" 0644
    changed "installed the package into $VENV (sources $HASH)"
fi

# --- 2. the shipped models --------------------------------------------------------------------
for model in hey_snips hey_jarvis; do
    ensure_dir "$ROOT/models" 0755
    ensure_dir "$ROOT/models/$model" 0755
    for f in backbone.onnx head.npz card.json MODEL_CARD.md training.json; do
        install_file "$SRC/models/$model/$f" "$ROOT/models/$model/$f" 0644
    done
done

# --- 3. units, sysusers, commands -------------------------------------------------------------
for unit in assistant.service assistant-clerk.service sda-coordinator.service; do
    # The units name /opt/assistant; follow PREFIX if it differs.
    sed "s#/opt/assistant/#$PREFIX/#g" "$SRC/systemd/$unit" >"$WORK/$unit"
    before=$CHANGES
    install_file "$WORK/$unit" "$DESTDIR/etc/systemd/system/$unit" 0644
    (( CHANGES == before )) || UNITS_CHANGED=1
done
install_file "$SRC/systemd/sysusers.d/assistant.conf" "$DESTDIR/usr/lib/sysusers.d/assistant.conf" 0644

# shellcheck disable=SC2016  # the $ signs are for the wrapper, not for us
printf '#!/bin/sh\nexec env ASSISTANT_CONFIG="${ASSISTANT_CONFIG:-/etc/assistant/assistant.yaml}" %s "$@"\n' \
    "$PREFIX/venv/bin/assistant" >"$WORK/assistant"
# shellcheck disable=SC2016
printf '#!/bin/sh\nexec %s "$@"\n' "$PREFIX/venv/bin/sda" >"$WORK/sda"
install_file "$WORK/assistant" "$DESTDIR/usr/local/bin/assistant" 0755
install_file "$WORK/sda" "$DESTDIR/usr/local/bin/sda" 0755

# The users must exist before anything is chowned to them.
if (( REAL )); then
    command -v systemd-sysusers >/dev/null || die "systemd-sysusers not found (is this a systemd system?)"
    systemd-sysusers /usr/lib/sysusers.d/assistant.conf || die "systemd-sysusers failed"
    getent passwd assistant >/dev/null || die "user 'assistant' was not created"
fi

# --- 4. configuration -------------------------------------------------------------------------
ensure_dir "$DESTDIR/etc/assistant" 0750
ensure_owner "$DESTDIR/etc/assistant" root:assistant
CONFIG="$DESTDIR/etc/assistant/assistant.yaml"
if [[ ! -e "$CONFIG" ]]; then
    [[ -f "$SRC/systemd/assistant.yaml" ]] || die "missing $SRC/systemd/assistant.yaml (the example configuration)"
    install -m 0640 "$SRC/systemd/assistant.yaml" "$CONFIG"
    changed "installed $CONFIG (edit it: broker, device name)"
fi
ensure_owner "$CONFIG" root:assistant
ensure_dir "$DESTDIR/etc/sda-coordinator" 0750
if (( REAL )) && getent group sda >/dev/null; then
    ensure_owner "$DESTDIR/etc/sda-coordinator" root:sda
fi

# --- 5. state and keys ------------------------------------------------------------------------
# gen_key PATH: 64 bytes from the kernel's CSPRNG (Ed25519 seed, X25519 scalar), never overwriting.
gen_key() {
    local dest="$1" tmp
    if [[ ! -e "$dest" ]]; then
        tmp="$(umask 077 && mktemp "$dest.new.XXXXXX")"
        (umask 077 && head -c 64 /dev/urandom >"$tmp")
        [[ "$(stat -c %s "$tmp")" -eq 64 ]] || { rm -f "$tmp"; die "could not read 64 bytes from /dev/urandom"; }
        chmod 0600 "$tmp"
        if (( REAL )); then chown assistant:assistant "$tmp"; fi
        mv -n "$tmp" "$dest"
        if [[ -e "$tmp" ]]; then
            rm -f "$tmp"  # someone else created the key meanwhile: keep theirs
        else
            changed "created key $dest"
        fi
    fi
    [[ "$(stat -c %s "$dest")" -eq 64 ]] || echo "  warning: $dest is not 64 bytes; left as it is" >&2
    ensure_mode "$dest" 0600
    ensure_owner "$dest" assistant:assistant
}
for state in assistant assistant-clerk; do
    ensure_dir "$DESTDIR/var/lib/$state" 0750
    ensure_owner "$DESTDIR/var/lib/$state" assistant:assistant
done
gen_key "$DESTDIR/var/lib/assistant/device.key"
gen_key "$DESTDIR/var/lib/assistant-clerk/clerk.key"

# --- 6. systemd -------------------------------------------------------------------------------
if (( REAL )); then
    if [[ -n "${UNITS_CHANGED:-}" ]]; then
        if [[ -d /run/systemd/system ]]; then
            systemctl daemon-reload || die "systemctl daemon-reload failed"
            echo "  systemctl daemon-reload"
        else
            echo "  systemd is not running here: skipped systemctl daemon-reload"
        fi
    fi
else
    echo "DESTDIR is set: skipped systemd-sysusers, chown and systemctl daemon-reload"
fi

# --- 7. summary -------------------------------------------------------------------------------
if (( CHANGES == 0 )); then
    echo "unchanged: everything is installed already"
else
    echo "$CHANGES change(s)"
fi
if (( REAL )); then
    cat <<EOF

Next steps:
  1. edit /etc/assistant/assistant.yaml (the microphone; learning.credentials once you take part)
  2. systemctl enable --now assistant.service
  3. journalctl -u assistant.service -f
A clerk (only if you agreed to be one): copy clerk.yaml to /etc/assistant/clerk.yaml
(root:assistant, mode 0640), then systemctl enable --now assistant-clerk.service
EOF
fi
