# Sourced by scripts/build-book and scripts/test: make sure .venv exists and holds
# the pinned requirements and attnlib (editable), then put it first on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "Creating the virtual environment .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements.txt "$stamp"; then
  echo "Installing the pinned requirements into .venv"
  .venv/bin/python -m pip install --quiet -r requirements.txt
  cp requirements.txt "$stamp"
fi
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || .venv/bin/python -m pip install --quiet --no-deps -e .
export PATH="$PWD/.venv/bin:$PATH"
