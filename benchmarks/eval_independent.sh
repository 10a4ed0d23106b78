#!/usr/bin/env bash
# Independent evaluation of the zoo on photographs it was never trained, validated or tuned on: the photos
# among KDE's plasma-workspace-wallpapers (apt-get install plasma-workspace-wallpapers), 2560x1600 JPEG, centre
# crops 1024x768 as the held-out set of cadyq.data.photos. Renders and drawings are left out.
#   benchmarks/eval_independent.sh [OUT_DIR] [MODEL ...]   (default /work/data/kde, the full-size x4 zoo)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/work/data/kde}; shift || true
MODELS=("$@"); [ ${#MODELS[@]} -gt 0 ] || MODELS=(edsr-fp32-x4 edsr-pams8-x4 edsr-cadyq-x4)
PY=${PYTHON:-python}
PHOTOS="BytheWater ColdRipple ColorfulCups EveningGlow FallenLeaf Grey OneStandsOut Path"
mkdir -p "$OUT/hr"
for n in $PHOTOS; do
  src=/usr/share/wallpapers/$n/contents/images/2560x1600.jpg
  [ -f "$src" ] || { echo "no $src: apt-get install -y plasma-workspace-wallpapers" >&2; exit 1; }
  [ -f "$OUT/hr/$n.png" ] || "$PY" -c "
from cadyq.data.io import Image, read_image, write_image
from cadyq.data.photos import centre_crop
write_image('$OUT/hr/$n.png', Image(centre_crop(read_image('$src').rgb), None, 8, False, None, None, 'RGB'))"
done
for m in "${MODELS[@]}"; do
  echo "== $m"
  "$PY" -m cadyq eval --model "$m" --data "$OUT/hr" --backend torch --json "$OUT/$m.json" | tail -n 1
done
