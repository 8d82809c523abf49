"""Session-scoped pytest fixture `slurm_cluster`: a real single-node SLURM
cluster with accounting (see tests/slurm_cluster.py).

Use it either way (both can coexist: one cluster per pytest process is
shared by every definition of the fixture):

    # in the top-level conftest.py
    pytest_plugins = ["tests.slurm_fixture"]

    # or in a test module
    from tests.slurm_fixture import slurm_cluster  # noqa: F401

- SLURM binaries missing or not root: the test is skipped, unless
  MAE_REQUIRE_SLURM=1 (CI), in which case it fails.
- Startup failure: the test fails with the daemons' log tails.
- While the cluster is up, os.environ carries its SLURM_CONF (so sbatch,
  sacct and submitit talk to it); the old values are restored at teardown.
"""

from __future__ import annotations

import os

import pytest

try:
    from tests.slurm_cluster import SlurmCluster, available
except ImportError:  # only tests/ itself on sys.path
    from slurm_cluster import SlurmCluster, available

_MISSING = object()

# One cluster per process. If the fixture function gets registered more than
# once (pytest_plugins *and* an import in a test module), pytest would set up
# each definition separately: two clusters, and os.environ pointing at the
# last one while tests of the other module hold the first. Share instead.
_shared: dict = {"cluster": None, "users": 0, "saved_env": None}


def _acquire(tmp_path_factory) -> SlurmCluster:
    if _shared["cluster"] is not None:
        _shared["users"] += 1
        return _shared["cluster"]

    ok, reason = available()
    if not ok:
        if os.environ.get("MAE_REQUIRE_SLURM") == "1":
            pytest.fail("MAE_REQUIRE_SLURM=1 but no SLURM cluster can be started: " + reason,
                        pytrace=False)
        pytest.skip(reason)

    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Exception as e:
        logs = cluster.logs()
        cluster.stop()
        pytest.fail("SLURM test cluster failed to start: %s\n%s" % (e, logs), pytrace=False)

    _shared["saved_env"] = {k: os.environ.get(k, _MISSING) for k in cluster.env}
    os.environ.update(cluster.env)
    _shared.update(cluster=cluster, users=1)
    return cluster


def _release() -> None:
    _shared["users"] -= 1
    if _shared["users"] > 0:
        return
    cluster, saved = _shared["cluster"], _shared["saved_env"] or {}
    _shared.update(cluster=None, users=0, saved_env=None)
    for k, v in saved.items():
        if v is _MISSING:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    cluster = _acquire(tmp_path_factory)
    try:
        yield cluster
    finally:
        _release()
