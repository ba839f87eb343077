# Sourced by scripts/serve and scripts/test: creates .venv in the repo root with Python >= 3.11 and
# installs mallard into it (editable), with the extras named in $MALLARD_EXTRAS.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

python=""
for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "mallard: needs Python 3.11 or newer (apt-get install python3)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        # Debian ships venv/ensurepip separately
        rm -rf .venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt-get update -qq
            apt-get install -y -qq "python${version}-venv" >/dev/null || apt-get install -y -qq python3-venv >/dev/null
            "$python" -m venv .venv
        else
            echo "mallard: '$python -m venv' failed: install python3-venv (sudo apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${MALLARD_EXTRAS:+[$MALLARD_EXTRAS]}"
