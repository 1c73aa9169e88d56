# Sourced by ops/* scripts: make .venv exist and hold the project, quickly when it already does.
# Reinstalls dependencies only when pyproject.toml changes, and refreshes the editable link tree
# only when the set of package files changes (strict editable mode links files, not folders).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
cd "$ROOT"

pick_python() {
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "macprovider needs Python >= 3.11 on PATH" >&2
    exit 1
}

if [ ! -x "$PY" ]; then
    "$(pick_python)" -m venv "$VENV"
fi

deps_stamp="$VENV/.macprovider-deps"
files_stamp="$VENV/.macprovider-files"
deps_hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
files_hash="$(find actors server cli -type f \( -name '*.py' -o -name '*.json' -o -name py.typed \) | sort | sha256sum | cut -d' ' -f1)"

# pip's and setuptools' chatter goes to a log, shown only when an install fails.
quiet_pip() {
    local log="$VENV/.macprovider-pip.log"
    if ! "$PY" -m pip --disable-pip-version-check "$@" >"$log" 2>&1; then
        cat "$log" >&2
        return 1
    fi
}

if [ "$(cat "$deps_stamp" 2>/dev/null)" != "$deps_hash" ]; then
    echo "installing macprovider and its dependencies into $VENV" >&2
    quiet_pip install setuptools==84.2.1
    quiet_pip install -e ".[test]" \
        --config-settings editable_mode=strict
    echo "$deps_hash" >"$deps_stamp"
    echo "$files_hash" >"$files_stamp"
elif [ "$(cat "$files_stamp" 2>/dev/null)" != "$files_hash" ]; then
    quiet_pip install --no-deps --no-build-isolation -e . \
        --config-settings editable_mode=strict
    echo "$files_hash" >"$files_stamp"
fi
export PATH="$VENV/bin:$PATH"
