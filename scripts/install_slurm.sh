#!/usr/bin/env bash
# Install a single-node SLURM stack (slurm-wlm, munge, mariadb, slurmdbd) so the
# test suite can start a real cluster (tests/slurm_cluster.py).
# Idempotent; quiet (full log in $LOG); always exits 0 when it cannot install,
# so the SLURM tests skip instead of failing.
set -u

LOG="${SLURM_INSTALL_LOG:-/tmp/install_slurm.log}"

have_all() {
    # mariadbd and slurmd(bd) live in sbin, which may not be on a non-root PATH.
    local b
    for b in sbatch munged slurmdbd mariadbd slurmctld slurmd; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || return 1
    done
}

if have_all; then
    echo "install_slurm: slurm, munge, slurmdbd and mariadb already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: not root, cannot apt-get install slurm-wlm munge mariadb-server slurmdbd; SLURM tests will skip"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: no apt-get on this machine; SLURM tests will skip"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
PKGS="slurm-wlm munge mariadb-server slurmdbd"
: >"$LOG"
# Try without refreshing the index first; only run apt-get update when that fails
# (e.g. empty package lists in a fresh container).
if ! apt-get install -y --no-install-recommends $PKGS >>"$LOG" 2>&1; then
    if ! { apt-get update >>"$LOG" 2>&1 && apt-get install -y --no-install-recommends $PKGS >>"$LOG" 2>&1; }; then
        echo "install_slurm: apt-get install failed, see $LOG"
        exit 1
    fi
fi

if have_all; then
    echo "install_slurm: installed $PKGS (log: $LOG)"
else
    echo "install_slurm: packages installed but binaries missing, see $LOG"
    exit 1
fi
