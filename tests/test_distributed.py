"""Distributed set-up: launcher variables from torchrun or submitit, and real 2-process gloo DDP runs
(pretraining and each trained evaluation protocol) against 1-process runs with the same global batch."""
import contextlib
import math
import os
from types import SimpleNamespace

import pytest
import torch

from core import distributed
from core.config import build_config
from core.errors import UserError
from tests import ddp_units
from tests.conftest import FAST
from tests.ddp_units import LAUNCH_VARS  # noqa: F401  (tests/test_eval.py and test_submit.py import it from here)

# Deterministic grid masks: the only randomness left is per-sample (augmentation seeded by image
# index), so 2 ranks x half batches compute the 1-process gradients up to summation order.
# fp32: in bf16 the two summation orders round apart by ~3e-3 (measured), hiding what is compared.
DDP = FAST + ["model.mask_strategy=grid", "pretrain.accum_iter=2", "pretrain.precision=fp32"]
# Measured: max |w_2proc - w_1proc| = 1.3e-5 and 2.1e-5 after 16 steps (the updates themselves are
# ~1e-3); ranks that stepped on their own halves without averaging differed by 1.1e-3.
DDP_ATOL = 1e-4


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


def assert_weights_close(a, b, atol=DDP_ATOL):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max |difference| {worst:.3g} > {atol}"
    return worst


# Each trained protocol on that pretraining run, a few steps each: the linear probe for 2 epochs
# of 4 steps, full and partial fine-tuning (the last 2 blocks) for 1 epoch of 8 steps. No drop path:
# its draws come from each process's RNG. The tiny preset's linear probe has no augmentation (its
# features computed once, every process training the head on the whole batch) and its fine-tuning
# no mixup or cutmix.
EVALS = ["eval.linprobe.epochs=2", "eval.linprobe.warmup_epochs=1", "eval.linprobe.batch_size=64",
         "eval.finetune.epochs=1", "eval.finetune.warmup_epochs=0", "eval.finetune.batch_size=32",
         "eval.finetune.drop_path=0.0"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """tests/ddp_units.py `protocols` (pretraining with accum_iter=2, then each trained protocol on
    it) once under `torchrun --nproc_per_node 2` and once in this process: {world size: config},
    and the run ids by name."""
    tmp = tmp_path_factory.mktemp("ddp")
    args = {n: [*DDP, *EVALS, f"run.work_dir={tmp / f'w{n}'}", f"run.results_dir={tmp / f'r{n}'}"] for n in (1, 2)}
    out = ddp_units.launch("protocols", tmp / "status.json", *args[2], cwd=tmp)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    with pytest.MonkeyPatch.context() as mp, one_thread():  # one thread: as each torchrun process had
        for name in LAUNCH_VARS:
            mp.delenv(name, raising=False)
        one = ddp_units.run("protocols", args[1])
    ids = ddp_units.protocol_ids(args[1])
    assert ddp_units.result(tmp / "status.json") == one == {rid: "done" for rid in ids.values()}
    return {n: build_config("tiny", args[n]) for n in (1, 2)}, ids


def unit_weights(cfg, run_id):
    from core import checkpoint
    return checkpoint.latest(os.path.join(cfg.run.work_dir, run_id))[0]["model"]


# name -> max |w_2proc - w_1proc| allowed on the final weights (fp32 throughout). Measured on this
# machine: "DDP" the 2-process run, "no DDP" the same with the DistributedDataParallel wrapper of the
# evaluation (or of pretraining) removed, each rank stepping on its own half of the batch.
MATCH = {
    "pretrain": DDP_ATOL,  # 16 AdamW steps: DDP 2.1e-5, no DDP 1.1e-3
    # 8 LARS steps of the head. Every process trains on the whole batch of precomputed features (the
    # tiny preset's probe has no augmentation, so nothing is sharded): DDP averages equal gradients
    # and cannot be told from no DDP (both 4.1e-7); checked is that this path runs and matches.
    "linprobe": 1e-5,
    # The paper's probe: fresh crops, sharded; see PER_PROCESS_BATCHNORM
    "linprobe_augment": 1e-2,
    "finetune": 1e-4,  # 8 AdamW steps with layer decay: DDP 1.5e-6, no DDP 7.0e-3
    "partial": 1e-4,  # the last 2 blocks, norm and head, 8 steps: DDP 1.2e-6, no DDP 8.3e-3
}
# The probe head's BatchNorm normalises each process's half of the batch with its own statistics, as
# the paper's code does (no SyncBatchNorm; gloo on the CPU has none): neither its running statistics
# (rank 0's, broadcast by DDP: 4.2e-3 apart) nor its losses equal one process's. The trained weight
# and bias do within sampling noise: DDP 1.9e-4 (3.7e-3 since the probe computes each step's features
# before its head, issue 16; not yet understood), no DDP 0.55.
PER_PROCESS_BATCHNORM = {"linprobe_augment"}


@pytest.mark.parametrize("name", list(MATCH))
def test_two_process_ddp_matches_one_process(ddp_runs, name):
    """Pretraining with accum_iter=2 (no_sync on the first micro-step) and each trained evaluation
    protocol: 2 gloo processes, each half of the global batch (sharded data, validation summed over
    the ranks), end with the weights and losses of one process with the same global batch. One
    record per run, of world size 2. (Rank 0 writes its 'done' records late in this launch: the
    evaluations that follow the pretraining on rank 1 must wait for its record.)"""
    from core import results

    cfgs, ids = ddp_runs
    recs = {n: results.read_record(cfgs[n].run.results_dir, ids[name]) for n in (1, 2)}
    assert recs[2]["status"] == "done" and recs[2]["world_size"] == 2 and recs[1]["world_size"] == 1
    assert len(os.listdir(os.path.join(cfgs[2].run.results_dir, "runs"))) == len(ids)
    weights = [unit_weights(cfgs[n], ids[name]) for n in (2, 1)]
    if name in PER_PROCESS_BATCHNORM:
        weights = [{k: v for k, v in w.items() if not k.startswith("head.0.")} for w in weights]
    assert_weights_close(*weights, atol=MATCH[name])
    if name not in PER_PROCESS_BATCHNORM:
        for a, b in zip(recs[2]["history"]["loss"], recs[1]["history"]["loss"], strict=True):
            assert math.isclose(a, b, rel_tol=1e-4), (a, b)


@pytest.mark.parametrize("batch, world, accum, message", [
    (100, 2, 3, "pretrain.batch_size=100 does not split into equal micro-batches over 2 processes x "
                "pretrain.accum_iter=3: use pretrain.batch_size=96 or 102, or pretrain.accum_iter=2 or 5"),
    (30, 4, 2, "pretrain.batch_size=30 does not split into equal micro-batches over 4 processes x "
               "pretrain.accum_iter=2: use pretrain.batch_size=24 or 32"),
    (4, 8, 1, "pretrain.batch_size=4 does not split into equal micro-batches over 8 processes: "
              "use pretrain.batch_size=8"),
])
def test_a_batch_that_does_not_split_names_the_nearest_settings_that_do(batch, world, accum, message):
    from core.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        distributed.split_batch(batch, world, accum)
    assert str(e.value) == message
    assert distributed.split_batch(4096, 64, 2) == 32


def fake_world(monkeypatch, module, world: int):
    monkeypatch.setattr(module, "init_distributed", lambda device: distributed.DistInfo(0, world, 0))


def test_pretraining_batch_that_does_not_split_over_the_processes_stops_before_writing(fast_cfg, monkeypatch):
    """4 processes x accum_iter=2 and a global batch of 30: one line naming 24 and 32, no record,
    no checkpoint (it used to train on micro-batches of 3, 24 images a step at the lr of 30)."""
    import core.train
    from core import results
    from core.errors import ConfigError
    fake_world(monkeypatch, core.train, 4)
    cfg = fast_cfg("pretrain.batch_size=30", "pretrain.accum_iter=2")
    with pytest.raises(ConfigError, match=r"batch_size=30 does not split .* use pretrain.batch_size=24 or 32$"):
        core.train.pretrain(cfg, progress=False)
    assert results.read_record(cfg.run.results_dir, cfg.run_id()) is None
    assert not os.path.exists(cfg.run.work_dir)


def test_evaluation_batch_that_does_not_split_over_the_processes_names_its_setting(fast_cfg, monkeypatch):
    import core.eval
    from core.errors import ConfigError
    fake_world(monkeypatch, core.eval, 4)
    cfg = fast_cfg("model.img_size=16", "data.synthetic_size=64", "eval.scratch.batch_size=30")
    with pytest.raises(ConfigError, match=r"^eval.scratch.batch_size=30 does not split into equal micro-batches "
                                          r"over 4 processes: use eval.scratch.batch_size=28 or 32$"):
        core.eval.scratch(cfg, progress=False)
