# Sourced by demo.sh and test.sh: creates .venv (once) and installs nc-tf into it.
# EXTRAS names the optional dependency groups (test.sh: dev,ray; demo.sh: none).
# uv (from PyPI) installs them: it downloads and unpacks in parallel, several
# times faster than pip on a fresh machine; pip is the fallback.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS-dev,ray}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
TARGET="."
[ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
if .venv/bin/python -m pip install --quiet --disable-pip-version-check uv; then
  .venv/bin/uv pip install --quiet --python .venv/bin/python -e "$TARGET"
else
  .venv/bin/python -m pip install --quiet -e "$TARGET"
fi
export PATH="$PWD/.venv/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL=2
