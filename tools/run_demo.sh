#!/usr/bin/env bash
# Fresh machine -> installed napari-fcres -> the main job on the embedded sample stack:
# train a CPU model, predict held-out slices, evaluate, write outputs to demo_output/.
# Installs where tools/install.sh does (the active environment, else .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
# shellcheck source=tools/python_env.sh
source tools/python_env.sh
select_python
"$PY" -m napari_fcres.cli demo --out demo_output "$@"
