#!/usr/bin/env bash
# System packages the tests use beyond the venv: a real SLURM cluster and FFCV's native libraries.
# Installs them when running as root (as CI does); elsewhere the tests that need them skip.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
rc=0
for script in install_slurm.sh install_ffcv.sh; do
    if [ -x "$here/$script" ]; then
        "$here/$script" || rc=1
    fi
done
exit $rc
