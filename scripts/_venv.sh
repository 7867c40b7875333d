# Shared by scripts/demo and scripts/test: a project venv with the project installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install --quiet -e ".[${HUB_EXTRAS:-test}]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import hub.cli" # fail here, clearly, if the install did not work
