#!/usr/bin/env bash
# Copy the zoo runs' resumable states (benchmarks/train_zoo.sh) into the repository, so that a later session,
# whose /work/runs starts empty, continues them: benchmarks/zoo_state/keep.sh [RUNS_DIR]   (default /work/runs)
# Kept per stage: last_state.pt (weights, Adam, scheduler, RNG, iteration), best.safetensors, the CSV logs,
# config.json, the `done` marker and the cadyq stages' iter-N.safetensors.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${1:-/work/runs}
for run in "$RUNS"/edsr-*; do
  [ -f "$run/last_state.pt" ] || continue
  name=$(basename "$run")
  [ -f "../../cadyq/zoo/$name.safetensors" ] && { rm -rf "$name"; continue; }  # shipped: nothing to continue
  mkdir -p "$name"
  for f in last_state.pt best.safetensors init.safetensors train.csv val.csv config.json done "$run"/iter-*.safetensors; do
    f=$(basename "$f")
    [ -e "$run/$f" ] && cp -p "$run/$f" "$name/"
  done
  it=$(tail -n 1 "$name/train.csv" | cut -d, -f1)
  echo "kept $name at iteration $it"
done
