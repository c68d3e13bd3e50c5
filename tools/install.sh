#!/usr/bin/env bash
# Install napari-fcres (and, with "testing", what the test suite needs).
#   bash tools/install.sh            # the package, for `fcres` and the napari plugin
#   bash tools/install.sh testing    # plus pytest, napari[pyqt5] and Qt's system libraries
# Where: $PYTHON if set, else the active virtual environment or conda env, else the
# project's own .venv (made here; `source .venv/bin/activate` to use it afterwards).
# torch: a torch already in that environment (e.g. a CUDA build) is kept; where none is
# installed we take torch 2.13.0 (on the project's CI machines a CPU wheel on local disk).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
# shellcheck source=tools/python_env.sh
source tools/python_env.sh

if [ "$extra" = "testing" ]; then
  pkgs="xvfb xauth libgl1 libegl1 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0 libxcb-icccm4
        libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
        libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1 libglib2.0-0"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    # shellcheck disable=SC2086
    if ! dpkg -s $pkgs >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
    fi
  else
    echo "note: not root or no apt-get: make sure Xvfb and Qt's libxcb libraries are installed" >&2
  fi
fi

select_python  # sets PY; makes .venv when no environment is active
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
if [ -n "$extra" ]; then
  "$PY" -m pip install -q -e ".[$extra]"
else
  "$PY" -m pip install -q -e ".[all]"
fi
if [ "$PY" = "$PWD/.venv/bin/python" ]; then
  echo "napari-fcres is installed in $PWD/.venv; enter it with: source .venv/bin/activate" >&2
fi
