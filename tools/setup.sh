# Sourced by tools/run, tools/test and tools/bench: makes sure the machine has
# what they need, then activates .venv. Safe to run again: a second run
# installs nothing when nothing changed.
#
#   haven_setup [APT_PACKAGE...]
#
# Apt packages are installed when running as root; otherwise the exact
# apt-get command is printed and the script stops.
#
# On a Raspberry Pi (/proc/device-tree/model says so) the venv also gets the
# "pi" extra: lgpio, the pin factory gpiozero uses there. Its PyPI wheel
# carries the C library, so the venv stays isolated (no
# --system-site-packages to reach Debian's python3-lgpio, which Debian 12
# lacks and only Raspberry Pi OS's archive has). There is no wheel for
# 32-bit Pi OS: the set-up says so and stops. Without lgpio the runtime
# would refuse to start (it never falls back to simulated pins unasked).

HAVEN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HAVEN_VENV="$HAVEN_ROOT/.venv"

_haven_say() { printf 'haven-setup: %s\n' "$*" >&2; }

_haven_python() {
    local py
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    _haven_say "Python 3.11 or newer is required (found: $(python3 --version 2>&1))"
    return 1
}

_haven_is_pi() {
    [ -r /proc/device-tree/model ] && tr -d '\0' </proc/device-tree/model | grep -q 'Raspberry Pi'
}

# The venv's extras: dev everywhere, and the GPIO pin factory on a Pi.
_haven_extras() {
    if ! _haven_is_pi; then
        echo dev
        return 0
    fi
    if [ "$(uname -m)" != aarch64 ]; then
        _haven_say "this Raspberry Pi runs a 32-bit system: lgpio (the GPIO pin factory) has wheels for 64-bit Raspberry Pi OS only; install that"
        return 1
    fi
    echo dev,pi
}

_haven_missing_apt() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            printf '%s ' "$pkg"
    done
}

_haven_apt() {
    local missing
    missing="$(_haven_missing_apt "$@")"
    [ -z "$missing" ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        _haven_say "missing system packages: $missing (no apt-get on this machine; install them by hand)"
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        _haven_say "missing system packages. Run as root:"
        printf '  apt-get update && apt-get install -y --no-install-recommends %s\n' "$missing" >&2
        return 1
    fi
    _haven_say "installing system packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || return 1
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null || return 1
}

haven_setup() {
    local py pkgs=("$@") stamp want extras
    py="$(_haven_python)" || return 1
    extras="$(_haven_extras)" || return 1
    # Debian splits venv and ensurepip out of python3 itself.
    if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
        local ver
        ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        pkgs+=("python3-venv" "python${ver}-venv")
    fi
    if [ ${#pkgs[@]} -gt 0 ]; then
        _haven_apt "${pkgs[@]}" || return 1
    fi
    if [ ! -x "$HAVEN_VENV/bin/python" ]; then
        _haven_say "creating $HAVEN_VENV"
        "$py" -m venv "$HAVEN_VENV" || return 1
    fi
    stamp="$HAVEN_VENV/.haven-installed"
    want="$( (cat "$HAVEN_ROOT/pyproject.toml"; echo "$extras") | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        _haven_say "installing Python packages into .venv"
        "$HAVEN_VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
        "$HAVEN_VENV/bin/python" -m pip install -q -e "$HAVEN_ROOT[$extras]" || return 1
        echo "$want" >"$stamp"
    fi
    export PATH="$HAVEN_VENV/bin:$PATH"
    export VIRTUAL_ENV="$HAVEN_VENV"
    cd "$HAVEN_ROOT" || return 1
}
