#!/usr/bin/env bash
# Fresh machine -> installed napari-fcres with test extras -> the whole test suite
# (GUI tests run under Xvfb through pytest-xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh testing
python3 -m pytest -q -p no:cacheprovider "$@"
