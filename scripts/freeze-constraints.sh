#!/usr/bin/env bash
# Write constraints.txt: the exact versions installed now, after the test suite passed with them.
# torch is left out (scripts/install.sh picks the build for the machine), and so is stagewise itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
{
  echo "# The exact versions the test suite last passed with (Python $($PY -c 'import platform; print(platform.python_version())'))."
  echo "# scripts/install.sh installs within them; STAGEWISE_UNPINNED=1 scripts/install.sh takes the newest pyproject.toml allows."
  echo "# torch is left to scripts/install.sh (its build depends on the machine). Regenerate: scripts/freeze-constraints.sh"
  $PY -m pip freeze --exclude-editable 2>/dev/null | grep -vE "^(torch|stagewise)==|@ " | sed 's/+[A-Za-z0-9.]*$//'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
