#!/usr/bin/env bash
# Wheels for the GPU check machine, which has no internet: what pride and the comparison need
# beyond its image (torch, accelerate, peft, pyarrow, rich, scikit-learn, ... are there). The
# versions are this project's tested ones (constraints.txt), so the GPU runs the code CI runs;
# liger-kernel (TRL at its best) is GPU-only and not in the constraints.
#   bash benchmarks/gpu/wheels.sh     # -> benchmarks/gpu/wheels/ (git-ignored, about 30 MiB)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=../..
DEST=wheels
LIGER=liger-kernel==0.8.5
PACKAGES="pydantic pydantic_core annotated-types typing-inspection datasets dill multiprocess trl transformers
          tokenizers fsspec fastapi starlette uvicorn opentelemetry-api"  # huggingface_hub: the image's 1.33 meets transformers' >=1.31
mkdir -p "$DEST"
pin() {  # name==version from constraints.txt (names compared as pip normalises them)
  local norm; norm=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  awk -F'==' -v n="$norm" '{k=tolower($1); gsub(/[_.]/, "-", k)} k==n {print $1"=="$2}' "$ROOT/constraints.txt"
}
specs=()
for p in $PACKAGES; do
  s=$(pin "$p"); [ -n "$s" ] || { echo "wheels.sh: $p is not in constraints.txt" >&2; exit 2; }
  specs+=("$s")
done
specs+=("$LIGER")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${specs[@]}"
du -sh "$DEST"
