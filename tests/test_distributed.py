"""Distributed set-up: launcher variables from torchrun or submitit, and a real 2-process gloo DDP run
against a 1-process run with the same global batch."""
import contextlib
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from core import distributed
from core.errors import UserError
from tests.conftest import FAST, ROOT

# Deterministic grid masks: the only randomness left is per-sample (augmentation seeded by image
# index), so 2 ranks x half batches compute the 1-process gradients up to summation order.
# fp32: in bf16 the two summation orders round apart by ~3e-3 (measured), hiding what is compared.
DDP = FAST + ["model.mask_strategy=grid", "pretrain.accum_iter=2", "pretrain.precision=fp32"]
# Measured: max |w_2proc - w_1proc| = 1.3e-5 after 16 steps (the updates themselves are ~1e-3);
# ranks that stepped on their own halves without averaging would differ by about the update size.
DDP_ATOL = 1e-4

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:  # set, then delete: the original state (unset) comes back afterwards,
        monkeypatch.setenv(name, "")  # also for what export_launcher_env writes into os.environ
        monkeypatch.delenv(name)
    return monkeypatch


def fake_job(rank, local, tasks, nodes, job_id="4242_3", hosts=("gpu017", "gpu018")):
    return SimpleNamespace(global_rank=rank, local_rank=local, num_tasks=tasks, num_nodes=nodes,
                           hostnames=list(hosts), raw_job_id=job_id)


def test_submitit_env_gives_torchrun_variables(clean_env):
    env = distributed.submitit_env(fake_job(rank=13, local=5, tasks=16, nodes=2, job_id="4242"))
    assert env == {"RANK": "13", "LOCAL_RANK": "5", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu017", "MASTER_PORT": str(distributed.master_port("4242"))}
    one_node = distributed.submitit_env(fake_job(rank=1, local=1, tasks=2, nodes=1))
    assert one_node["MASTER_ADDR"] == "127.0.0.1"
    info = distributed.export_launcher_env(fake_job(rank=13, local=5, tasks=16, nodes=2))
    assert info == distributed.DistInfo(13, 16, 5) and os.environ["MASTER_ADDR"] == "gpu017"


def test_array_tasks_on_one_node_get_different_ports():
    ports = {distributed.master_port(str(j)) for j in range(1000, 1100)}
    assert len(ports) == 100 and all(20_000 <= p < 40_000 for p in ports)


def test_torchrun_variables_win_inside_a_job(clean_env):
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    assert distributed.export_launcher_env(fake_job(rank=0, local=0, tasks=1, nodes=1)) == distributed.DistInfo(1, 4, 1)


@pytest.mark.parametrize("env, needle", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "must be integers"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "need 0 <= RANK < WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT not set"),
])
def test_bad_launcher_variables_are_one_line(clean_env, env, needle):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(UserError, match=needle):
        distributed.init(torch.device("cpu"))


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def final_weights(cfg):
    from core import checkpoint
    from core.train import ckpt_dir
    return checkpoint.latest(ckpt_dir(cfg))[0]["model"]


def assert_weights_close(a, b, atol=DDP_ATOL):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max |difference| {worst:.3g} > {atol}"
    return worst


def test_torchrun_two_process_gloo_matches_one_process(fast_cfg, tmp_path, clean_env):
    """`torchrun --nproc_per_node 2 run_all.py pretrain`: gloo DDP on the CPU, accumulation with no_sync
    on the first micro-step, one record, weights as a single process with the same global batch."""
    from core import results
    from core.train import pretrain

    two = fast_cfg(*DDP[len(FAST):], f"run.work_dir={tmp_path / 'w2'}", f"run.results_dir={tmp_path / 'r2'}")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          os.path.join(ROOT, "run_all.py"), "pretrain", "--quiet", *DDP,
                          f"run.work_dir={tmp_path / 'w2'}", f"run.results_dir={tmp_path / 'r2'}"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = results.read_record(two.run.results_dir, two.run_id())
    assert rec["status"] == "done" and rec["world_size"] == 2
    one = fast_cfg(*DDP[len(FAST):])
    assert one.run_id() == two.run_id()  # world size is not part of a run: the same run
    with one_thread():  # as each torchrun process had; and 2 cores shared with the suite
        pretrain(one, progress=False)
    assert_weights_close(final_weights(two), final_weights(one))
