#!/bin/sh
# Configure and build cpp/ into BUILD_DIR (default build/cpp) against the installed torch wheel.
#   PY=python3 CMAKE_BUILD_TYPE=Release CADYQ_CMAKE_ARGS="-DCADYQ_WITH_TENSORRT=ON" cpp/scripts/build.sh [BUILD_DIR]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build/cpp}
PY=${PY:-python3}
sh "$here/scripts/install-deps.sh"
prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)') || {
  echo "cadyq cpp: $PY cannot import torch; run make install first" >&2
  exit 1
}
# shellcheck disable=SC2086
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" -DCMAKE_PREFIX_PATH="$prefix" \
  ${CADYQ_CMAKE_ARGS:-} >/dev/null
jobs=$(nproc 2>/dev/null || echo 2)
cmake --build "$build" -j "$jobs"
