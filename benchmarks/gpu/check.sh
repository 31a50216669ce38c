#!/usr/bin/env bash
# The prepared GPU check (issue 24), one command on a lent GPU machine:
#   bash benchmarks/gpu/check.sh --out "$OUT"          # GPU: installs benchmarks/gpu/wheels/ first
#   bash benchmarks/gpu/check.sh --smoke --out DIR     # the same code on CPU, tiny shapes (in the tests)
# Writes DIR/check.json (every part, as it finishes) and DIR/check.md. See check.py for the parts.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
if [[ " $* " != *" --smoke "* ]] && compgen -G "$HERE/wheels/*.whl" > /dev/null; then
  SITE="${PRIDE_GPU_SITE:-/tmp/pride-gpu-site}"
  if [ ! -e "$SITE/.installed" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$HERE"/wheels/*.whl
    touch "$SITE/.installed"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$PY" "$HERE/check.py" "$@"
