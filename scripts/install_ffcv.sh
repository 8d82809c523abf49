#!/usr/bin/env bash
# Install FFCV 1.0.2 into .venv for data.backend=ffcv (docs/ffcv.md): Debian's pkg-config,
# libopencv-dev and libturbojpeg0-dev when missing (as root), then the pins of
# requirements-ffcv.txt and ffcv itself with pip. Idempotent and quiet (full log in $LOG); a
# second run only checks (well under 2 s). Exits 0 without installing where it cannot (not root,
# no apt-get): the FFCV tests then skip; exits 1 when an install it attempted failed.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOG="${FFCV_INSTALL_LOG:-/tmp/install_ffcv.log}"
FFCV_VERSION=1.0.2
DEBS="pkg-config libopencv-dev libturbojpeg0-dev"

if [ ! -x "$PY" ]; then
    echo "install_ffcv: no $PY (run 'make install' first)"
    exit 1
fi

# Installed = every pin at its version and ffcv's native library loads (it links Debian's opencv
# and turbojpeg). Cheap on purpose: importing ffcv itself takes seconds (numba compiles).
ffcv_ok() {
    "$PY" - "$FFCV_VERSION" <<'PY' >/dev/null 2>&1
import ctypes, glob, importlib.metadata as md, importlib.util, os, sys
pins = dict(line.split("==") for line in open("requirements-ffcv.txt")
            if "==" in line and not line.startswith("#"))
pins = {k.strip(): v.strip() for k, v in pins.items()}
pins["ffcv"] = sys.argv[1]
for name, version in pins.items():
    if md.version(name) != version:
        sys.exit(1)
spec = importlib.util.find_spec("ffcv")
ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(spec.origin), "_libffcv*.so"))[0])
PY
}

if ffcv_ok; then
    echo "install_ffcv: ffcv $FFCV_VERSION already installed"
    exit 0
fi

: >"$LOG"
missing=""
for pkg in $DEBS; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
command -v c++ >/dev/null 2>&1 || missing="$missing g++"
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install_ffcv: need${missing} (apt-get as root) to build ffcv; FFCV tests will skip"
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    # without refreshing the index first; apt-get update only when that fails (empty lists)
    if ! apt-get install -y --no-install-recommends $missing >>"$LOG" 2>&1; then
        if ! { apt-get update >>"$LOG" 2>&1 && apt-get install -y --no-install-recommends $missing >>"$LOG" 2>&1; }; then
            echo "install_ffcv: apt-get install$missing failed, see $LOG"
            exit 1
        fi
    fi
fi

# numpy is pinned to the version already installed so that nothing here can move it
numpy_now="$("$PY" -c 'import numpy; print(numpy.__version__)')"
if ! "$PY" -m pip install -q -r requirements-ffcv.txt "numpy==$numpy_now" >>"$LOG" 2>&1 ||
   ! "$PY" -m pip install -q --no-deps --no-build-isolation "ffcv==$FFCV_VERSION" >>"$LOG" 2>&1; then
    echo "install_ffcv: pip install failed, see $LOG"
    exit 1
fi

if ffcv_ok; then
    echo "install_ffcv: installed ffcv $FFCV_VERSION (log: $LOG)"
else
    echo "install_ffcv: ffcv installed but its native library does not load, see $LOG"
    exit 1
fi
