# Sourced by tools/install.sh, tools/run_demo.sh, tools/run_tests.sh and .ci/run (bash).
# Picks the Python to install into and to run with, and sets PY to it:
#   1. $PYTHON, when set;
#   2. the active virtual environment or conda env ($VIRTUAL_ENV / $CONDA_PREFIX);
#   3. otherwise the project's own .venv, made on first use, so a system Python that
#      refuses `pip install` (PEP 668, Debian/Ubuntu) is never touched.  The .venv sees
#      the system's site-packages only when the system Python already has torch (a CUDA
#      build, say), so that torch is kept; otherwise it is isolated.

_base_python() {
  if command -v python3 >/dev/null 2>&1; then echo python3; else echo python; fi
}

# make_venv DIR [venv options]: a new virtual environment with pip in DIR.
# Debian/Ubuntu keep venv's pip bootstrap in the python3-venv package: as root with
# apt-get it is installed when missing; otherwise the error says what to install.
make_venv() {
  local dir="$1"
  shift
  local base
  base="$(_base_python)"
  if ! "$base" -m venv "$@" "$dir" >/dev/null 2>&1; then
    rm -rf "$dir"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
      local ver
      ver="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3-venv "python${ver}-venv" >/dev/null 2>&1 \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          python3-venv >/dev/null
    fi
    if ! "$base" -m venv "$@" "$dir"; then
      rm -rf "$dir"
      echo "error: cannot create a virtual environment in $dir with $base;" \
           "install the python3-venv package (sudo apt install python3-venv) and rerun" >&2
      return 1
    fi
  fi
}

# select_python: sets PY (creating .venv in the current folder when needed).
select_python() {
  if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PY="$VIRTUAL_ENV/bin/python"
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
    PY="$CONDA_PREFIX/bin/python"
  else
    if [ ! -x .venv/bin/python ]; then
      local opts=()
      if "$(_base_python)" -c "import torch" >/dev/null 2>&1; then
        opts=(--system-site-packages)  # keep the torch the system Python already has
        echo "making .venv (with the system's site-packages, to keep its torch)" >&2
      else
        echo "making .venv (no virtual environment is active)" >&2
      fi
      make_venv .venv ${opts[@]+"${opts[@]}"}
    fi
    PY="$PWD/.venv/bin/python"
  fi
  export PY
}
