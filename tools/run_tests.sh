#!/usr/bin/env bash
# Fresh machine -> installed napari-fcres with test extras -> the whole test suite
# (GUI tests run under Xvfb through pytest-xvfb).  Installs where tools/install.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh testing
# shellcheck source=tools/python_env.sh
source tools/python_env.sh
select_python
"$PY" -m pytest -q -p no:cacheprovider "$@"
