"""The training step's speed items (issue 8): torch.compile, fp16 with a GradScaler and bf16
without one, no host sync per step, DDP no_sync while accumulating, fused AdamW, pinned memory
and persistent loader workers."""
import contextlib
import math
import os
import sys
import types

import pytest
import torch

from core import checkpoint
from core.device import autocast, cpu_attention, grad_scaler
from core.distributed import DistInfo
from core.model import MAE
from core.targets import build_target
from core.train import _Run, build_optimizer, forward_backward, optimizer_step, pretrain
from tests.ddp_units import count_syncs_in_step_loop, launch, result

SHORT = ["data.synthetic_size=32", "pretrain.batch_size=16", "pretrain.epochs=1",
         "pretrain.warmup_epochs=0"]  # 2 steps of 16


def tiny(cfg):
    torch.manual_seed(0)
    target = build_target(cfg.model, cfg.data)
    return MAE(cfg.model, target.dim), target


def batch(cfg, n=4):
    from core.masking import make_mask
    g = torch.Generator().manual_seed(0)
    size = cfg.model.img_size
    imgs = torch.randn(n, 3, size, size, generator=g)
    return imgs, make_mask("random", n, size // 4, cfg.model.mask_ratio, g)


# --------------------------------------------------------------------------- compile

def test_compile_true_trains_like_eager_on_cpu(fast_cfg, tmp_path):
    """pretrain.compile=true wraps the model in torch.compile (inductor, gcc on the CPU): a short
    run compiles a graph and matches the eager run's loss."""
    eager = pretrain(fast_cfg(*SHORT), progress=False)
    import torch._dynamo
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = fast_cfg(*SHORT, "pretrain.compile=true", f"run.results_dir={tmp_path / 'rc'}",
                   f"run.work_dir={tmp_path / 'wc'}")
    compiled = pretrain(cfg, progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # a graph was really compiled
    assert compiled["status"] == "done" and compiled["config"]["pretrain"]["compile"] is True
    assert compiled["history"]["loss"][0] == pytest.approx(eager["history"]["loss"][0], rel=1e-3)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- precision

@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_autocast_runs_the_matmuls_in_the_chosen_dtype_on_cpu(fast_cfg, precision, dtype):
    cfg = fast_cfg()
    model, target = tiny(cfg)
    seen = []
    model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    imgs, mask = batch(cfg)
    cpu = torch.device("cpu")
    loss = forward_backward(model, target, imgs, mask, precision, cpu, grad_scaler(precision, cpu))
    assert seen == [dtype] and loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


def test_bf16_has_no_grad_scaler_and_fp16_has_one(fast_cfg):
    cpu = torch.device("cpu")
    assert not grad_scaler("bf16", cpu).is_enabled() and not grad_scaler("fp32", cpu).is_enabled()
    assert grad_scaler("fp16", cpu).is_enabled()


def test_fp16_grad_scaler_skips_an_overflowing_step_with_fused_adamw(fast_cfg):
    """A scale so large that the fp16 gradients overflow: the fused optimizer must skip the step
    (weights unchanged, no NaN) and the scaler must back off. Without a scaler the weights go NaN."""
    cfg = fast_cfg("pretrain.precision=fp16")
    model, target = tiny(cfg)
    cpu = torch.device("cpu")
    opt = build_optimizer(model, cfg, cpu)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imgs, mask = batch(cfg)
    forward_backward(model, target, imgs, mask, "fp16", cpu, scaler)
    optimizer_step(model, opt, scaler)
    assert scaler.get_scale() < 2.0 ** 100
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a sane scale: the step is taken
    scaler.update(2.0 ** 10)
    forward_backward(model, target, imgs, mask, "fp16", cpu, scaler)
    optimizer_step(model, opt, scaler)
    assert not torch.equal(before["decoder_pred.weight"], model.decoder_pred.weight)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def count_fused_attention(monkeypatch) -> list:
    calls, real = [], torch.nn.functional.scaled_dot_product_attention
    def spy(q, *a, **k):
        if q.device.type != "meta":  # not the FLOP count's forward on the meta device
            calls.append(1)
        return real(q, *a, **k)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def test_fp16_run_on_cpu_checkpoints_its_grad_scaler(fast_cfg, monkeypatch):
    fused = count_fused_attention(monkeypatch)
    rec = pretrain(fast_cfg(*SHORT, "pretrain.precision=fp16"), progress=False)
    assert rec["precision"] == "fp16" and math.isfinite(rec["metrics"]["final_loss"])
    assert checkpoint.load_file(rec["last_checkpoint"])["scaler"]["scale"] > 0
    assert len(fused) == 2 * (4 + 2)  # fp16 keeps the fused kernel: 2 steps x (4 + 2 blocks)


def test_bf16_run_on_cpu_has_no_grad_scaler_and_plain_attention(fast_cfg, monkeypatch):
    fused = count_fused_attention(monkeypatch)
    rec = pretrain(fast_cfg(*SHORT, "pretrain.precision=bf16"), progress=False)
    assert rec["precision"] == "bf16" and math.isfinite(rec["metrics"]["final_loss"])
    assert checkpoint.load_file(rec["last_checkpoint"])["scaler"] == {}
    assert fused == []


def test_cpu_bf16_plain_attention_computes_what_the_fused_kernel_does(fast_cfg):
    cfg = fast_cfg()
    model, _ = tiny(cfg)
    imgs, mask = batch(cfg)
    cpu = torch.device("cpu")
    blocks = [*model.blocks, *model.decoder_blocks]
    assert not cpu_attention(model, cpu, "fp32") and all(b.attn.fused_attn for b in blocks)
    with autocast("bf16", cpu):
        fused = model(imgs, mask).float()
    assert cpu_attention(model, cpu, "bf16") and not any(b.attn.fused_attn for b in blocks)
    with autocast("bf16", cpu):
        plain = model(imgs, mask).float()
    assert (plain - fused).abs().max() < 0.05 * fused.abs().max()  # bf16 rounding apart


# --------------------------------------------------------------------------- host syncs

SYNC_RUN = ["data.synthetic_size=32", "pretrain.batch_size=8", "pretrain.epochs=1", "pretrain.warmup_epochs=0"]


@pytest.mark.parametrize("precision,accum", [("fp32", 1), ("fp16", 2)])  # fp16: the GradScaler path
def test_no_host_sync_per_step(fast_cfg, monkeypatch, precision, accum):
    """4 steps with log_every=100: nothing in the loop waits for the device. With log_every=2
    the loss is read exactly every second step (so the spy does see syncs)."""
    calls = count_syncs_in_step_loop(monkeypatch)
    small = [*SYNC_RUN, f"pretrain.precision={precision}", f"pretrain.accum_iter={accum}"]
    rec = pretrain(fast_cfg(*small, "pretrain.log_every=100"), progress=False)
    assert rec["status"] == "done" and calls == []
    if precision == "fp32":  # the spy works: a loss read every second step is seen (fp16 is slow on CPUs)
        pretrain(fast_cfg(*small, "pretrain.log_every=2", "pretrain.seed=1"), progress=False)
        assert len(calls) == 2 and all(c.startswith("item at") and "train.py" in c for c in calls), calls


def test_no_host_sync_per_step_under_two_process_ddp(tmp_path, dirs):
    """The same 4 steps under `torchrun --nproc_per_node 2` (gloo, accum_iter=2): the stop-flag vote
    is an all-reduce whose result the host reads, so it is taken every log_every steps, not every
    step. log_every=100: nothing in either rank's loop waits. log_every=2: at step 2 the loss and
    the vote, at step 4 the loss (the epoch's end, where train() votes outside the loop)."""
    from tests.conftest import FAST
    out = launch("syncs", tmp_path / "syncs.json", *FAST, *dirs, *SYNC_RUN, "pretrain.precision=fp32",
                 "pretrain.accum_iter=2", cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    syncs = result(tmp_path / "syncs.json")
    assert syncs["quiet"] == [[], []]
    where = [[(c.split()[0], os.path.basename(c.split()[-1]).split(":")[0]) for c in calls]
             for calls in syncs["logged"]]
    assert where == [[("item", "train.py"), ("item", "distributed.py"), ("item", "train.py")]] * 2, syncs["logged"]


def test_stop_flag_is_looked_at_every_log_every_steps(fast_cfg, monkeypatch):
    """Pretraining: a stop signal during step 4 with log_every=3 stops the run after step 6, the
    next look (all ranks look at the same steps), with a checkpoint of step 6."""
    import signal

    import core.train
    from core.errors import Preempted
    real, calls = core.train.optimizer_step, []

    def step_then_signal(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)
    monkeypatch.setattr(core.train, "optimizer_step", step_then_signal)
    cfg = fast_cfg("data.synthetic_size=64", "pretrain.batch_size=8", "pretrain.epochs=1",
                   "pretrain.warmup_epochs=0", "pretrain.log_every=3")
    with pytest.raises(Preempted, match="at step 6;"):
        pretrain(cfg, progress=False)
    assert len(calls) == 6 and checkpoint.latest(core.train.ckpt_dir(cfg))[0]["global_step"] == 6


@pytest.mark.parametrize("log_every, looks", [(3, 3), (100, 1)])
def test_evaluation_loop_looks_at_the_stop_flag_every_log_every_steps(fast_cfg, monkeypatch, log_every, looks):
    """Evaluation training (here the scratch baseline: 2 epochs of 4 steps): the flag is looked at
    every pretrain.log_every steps and after each epoch but the last (its checkpoint just
    written); log_every=3: after steps 3, 4 (the epoch's end) and 6. It was every step."""
    import core.distributed
    from core.eval import scratch
    real, seen = core.distributed.any_rank, []
    monkeypatch.setattr(core.distributed, "any_rank", lambda *a: seen.append(1) or real(*a))
    cfg = fast_cfg("model.img_size=16", "data.synthetic_size=64", "eval.scratch.epochs=2",
                   "eval.scratch.warmup_epochs=0", "eval.scratch.batch_size=16", f"pretrain.log_every={log_every}")
    assert scratch(cfg, progress=False)["status"] == "done" and len(seen) == looks


# --------------------------------------------------------------------------- DDP, optimizer, loader

class FakeDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel: records whether each forward ran under no_sync."""

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module, self.in_no_sync, self.forwards = module, False, []

    def forward(self, *a, **k):
        self.forwards.append(self.in_no_sync)
        return self.module(*a, **k)

    @contextlib.contextmanager
    def no_sync(self):
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False


def test_ddp_accumulation_syncs_gradients_only_on_the_last_micro_step(fast_cfg, monkeypatch):
    import core.train
    made = []
    monkeypatch.setattr(core.train, "DDP", lambda module, **k: made.append(FakeDDP(module, **k)) or made[-1])
    monkeypatch.setattr(core.train, "init_distributed", lambda device: DistInfo(rank=0, world=2, local_rank=0))
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: None)  # the stop-flag vote
    rec = pretrain(fast_cfg("data.synthetic_size=64", "pretrain.batch_size=16", "pretrain.epochs=1",
                            "pretrain.warmup_epochs=0", "pretrain.accum_iter=4"), progress=False)
    assert rec["status"] == "done" and len(made) == 1
    # 64 images / 2 ranks / micro-batch 16/4/2 = 16 forwards = 4 steps of 4 micro-steps
    assert made[0].forwards == [True, True, True, False] * 4


def test_adamw_is_fused_on_cpu(fast_cfg):
    cfg = fast_cfg()
    model, _ = tiny(cfg)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    assert opt.defaults["fused"] is True
    assert build_optimizer(model, cfg, torch.device("meta")).defaults["fused"] in (None, False)


@pytest.mark.parametrize("device,workers,pinned,persistent", [("cuda", 2, True, True), ("cuda", 0, True, False),
                                                                 ("cpu", 2, False, True), ("cpu", 0, False, False)])
def test_loader_pins_memory_on_cuda_and_keeps_its_workers(fast_cfg, device, workers, pinned, persistent):
    from core.data import build_dataset
    cfg = fast_cfg(f"data.num_workers={workers}")
    run = types.SimpleNamespace(cfg=cfg, micro_batch=8, dist=DistInfo(), device=torch.device(device))
    loader = _Run._loader(run, build_dataset(cfg.data, "train", cfg.model.img_size)).loader
    assert loader.pin_memory is pinned and loader.persistent_workers is persistent


FAULTS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from core.device import keep_freed_memory
if {keep}:
    assert keep_freed_memory()
def step():  # a training step's pattern: a few big activations, all freed at the end
    ts = [torch.empty(10 * 2**20).fill_(1.0) for _ in range(3)]
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[5:]))
"""


def test_cpu_training_reuses_freed_memory_instead_of_page_faulting():
    """Three 40 MB activations a step: glibc's default maps and unmaps them every step (~90k
    page faults over three steps); with keep_freed_memory the heap settles within a few steps
    (aligned blocks first have to coalesce) and the last three steps reuse it."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    faults = {}
    for keep in (False, True):
        out = subprocess.run([sys.executable, "-c", FAULTS.format(root=root, keep=keep)], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr
        faults[keep] = int(out.stdout.split()[-1])
    assert faults[False] > 40_000 and faults[True] < 2_000, faults
