#!/bin/sh
# `make cpp` against the CUDA build of the torch wheel (what `pip install torch` gives on Linux) on a machine without
# the CUDA toolkit: download that wheel (pip download --isolated: PyPI's build, not a local CPU one), unpack its
# torch/ folder, build cpp/ against it, and upscale a photo with a CPU .pt2 package through the result.
#   sh cpp/scripts/check_cuda_wheel.sh [WORK_DIR]     (default /tmp/cadyq-cuda-wheel; ~530 MB download, cached there)
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-/tmp/cadyq-cuda-wheel}
PY=${PY:-python3}
version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
mkdir -p "$work"
[ -n "$(ls "$work"/torch-"$version"-*.whl 2>/dev/null)" ] || "$PY" -m pip download --isolated --no-deps -q -d "$work" "torch==$version"
wheel=$(ls "$work"/torch-"$version"-*.whl | head -1)
case "$wheel" in *+cpu*) echo "cuda wheel check: got a CPU wheel ($wheel)" >&2; exit 1 ;; esac
[ -d "$work/site/torch" ] || "$PY" -m zipfile -e "$wheel" "$work/site"
[ -f "$work/site/torch/lib/libtorch_cuda.so" ] || { echo "cuda wheel check: $wheel has no libtorch_cuda.so" >&2; exit 1; }
rm -rf "$work/build"
cmake -S "$here/cpp" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/site/torch/share/cmake" -DCADYQ_BUILD_EXAMPLES=OFF | grep cadyq || true
cmake --build "$work/build" -j "$(nproc 2>/dev/null || echo 2)" > "$work/build.log"
"$PY" -m cadyq export --model edsr-tiny-cadyq-x2-cpu --format aoti -o "$work/m.pt2" > /dev/null
"$PY" -c "from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()[:100, :120]).save('$work/a.png')"
"$work/build/cadyq-upscale" "$work/a.png" -o "$work/out.png" --model "$work/m.pt2" --overwrite
echo "cuda wheel check: libcadyq built against $(basename "$wheel") without the CUDA toolkit, and ran a CPU package"
