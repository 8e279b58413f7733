#!/usr/bin/env bash
# Remove what systemd/install.sh installed. See systemd/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo systemd/uninstall.sh [--purge] [--help]

Stops and disables the services, removes the units, the sysusers.d file, the `assistant` and
`sda` commands, the venv and the models under PREFIX.
Keeps /etc/assistant, /etc/sda-coordinator and /var/lib/{assistant,assistant-clerk,sda-coordinator}
(the owner's configuration, labels and keys) unless --purge is given.
The system users `assistant` and `sda` are never deleted (files may still belong to them).

Environment:
  DESTDIR   remove from this staging directory instead of / (no systemctl); default: empty
  PREFIX    as given to install.sh; default: /opt/assistant
EOF
}

die() {
    echo "uninstall.sh: error: $*" >&2
    exit 1
}

PURGE=0
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --purge) PURGE=1 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/opt/assistant}"
[[ "$PREFIX" == /* && "$PREFIX" != / ]] || die "PREFIX must be an absolute path other than /, got '$PREFIX'"
PREFIX="${PREFIX%/}"
DESTDIR="${DESTDIR%/}"

REAL=0
if [[ -z "$DESTDIR" ]]; then
    REAL=1
    [[ "$(id -u)" -eq 0 ]] || die "a real uninstall must run as root: sudo $0 (or set DESTDIR=/some/dir)"
elif [[ ! -d "$DESTDIR" ]]; then
    echo "nothing to remove: DESTDIR=$DESTDIR does not exist"
    exit 0
fi

UNITS=(assistant.service assistant-clerk.service sda-coordinator.service)
CHANGES=0
changed() {
    echo "  $*"
    CHANGES=$((CHANGES + 1))
}

remove() {
    local path
    for path in "$@"; do
        if [[ -e "$path" || -L "$path" ]]; then
            rm -rf -- "$path" || die "cannot remove $path"
            changed "removed $path"
        fi
    done
}

SYSTEMD_UP=0
if (( REAL )) && [[ -d /run/systemd/system ]]; then SYSTEMD_UP=1; fi

if (( SYSTEMD_UP )); then
    for unit in "${UNITS[@]}"; do
        if [[ -e "/etc/systemd/system/$unit" ]]; then
            if systemctl is-active --quiet "$unit" || systemctl is-enabled --quiet "$unit" 2>/dev/null; then
                systemctl disable --now "$unit" || die "systemctl disable --now $unit failed"
                changed "stopped and disabled $unit"
            fi
        fi
    done
fi

for unit in "${UNITS[@]}"; do
    remove "$DESTDIR/etc/systemd/system/$unit"
done
remove "$DESTDIR/usr/lib/sysusers.d/assistant.conf" \
    "$DESTDIR/usr/local/bin/assistant" \
    "$DESTDIR/usr/local/bin/sda" \
    "$DESTDIR$PREFIX/venv" \
    "$DESTDIR$PREFIX/models" \
    "$DESTDIR$PREFIX/.installed-from"
if [[ -d "$DESTDIR$PREFIX" ]] && rmdir "$DESTDIR$PREFIX" 2>/dev/null; then
    changed "removed $DESTDIR$PREFIX/"
fi

if (( PURGE )); then
    remove "$DESTDIR/etc/assistant" \
        "$DESTDIR/etc/sda-coordinator" \
        "$DESTDIR/var/lib/assistant" \
        "$DESTDIR/var/lib/assistant-clerk" \
        "$DESTDIR/var/lib/sda-coordinator"
else
    for kept in "$DESTDIR/etc/assistant" "$DESTDIR/etc/sda-coordinator" "$DESTDIR/var/lib/assistant" \
        "$DESTDIR/var/lib/assistant-clerk" "$DESTDIR/var/lib/sda-coordinator"; do
        if [[ -e "$kept" ]]; then echo "  kept $kept (use --purge to remove it)"; fi
    done
fi

if (( REAL )); then
    if (( SYSTEMD_UP && CHANGES > 0 )); then
        systemctl daemon-reload || die "systemctl daemon-reload failed"
        echo "  systemctl daemon-reload"
    fi
else
    echo "DESTDIR is set: skipped systemctl"
fi

if (( CHANGES == 0 )); then
    echo "unchanged: nothing to remove"
else
    echo "$CHANGES change(s)"
fi
