#!/usr/bin/env bash
# Fresh machine -> installed napari-fcres -> the main job on the embedded sample stack:
# train a CPU model, predict held-out slices, evaluate, write outputs to demo_output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
fcres demo --out demo_output "$@"
