"""The one declaration of every config key: its one-line description, its allowed range or form,
and for recipe keys the paper table it comes from.

core.config checks every value against its entry at parse time (one line naming the key, exit 2,
nothing written), and `run_all.py config` prints it. A key added to a dataclass without an entry
here fails tests/test_config.py. This module imports nothing of the suite (config imports it).
Cross-key rules (img_size a multiple of the patch, warmup <= epochs, ...) stay in config.validate.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass


class Check:
    """One allowed range or form. error(value) -> None, or why the value is refused."""

    def error(self, value) -> str | None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Check):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def error(self, value):
        if isinstance(value, float) and not math.isfinite(value):
            bound = f" {self._words()}" if (self.lo, self.hi) != (None, None) else ""
            return f"must be a finite number{bound}, got {value}"
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high:
            return f"must be {self._words()}, got {value}"
        return None

    def _words(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"in {self.describe()}"

    def describe(self):
        if self.lo is not None and self.hi is not None:
            return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        return self._words() if (self.lo, self.hi) != (None, None) else "any finite number"


@dataclass(frozen=True)
class Each(Check):
    """A tuple of `n` numbers (n=None: any length), each in `inner`."""
    inner: Range
    n: int | None = None

    def error(self, value):
        if self.n is not None and len(value) != self.n:
            return f"must be {self.n} numbers, got {tuple(value)}"
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"must hold numbers only, got {tuple(value)}"
            bad = self.inner.error(v)
            if bad:
                return f"must be {self.describe()}, got {tuple(value)}"
        return None

    def describe(self):
        return f"{self.n or 'any number of'} numbers, each in {self.inner.describe()}"


@dataclass(frozen=True)
class OneOf(Check):
    choices: tuple

    def error(self, value):
        return None if value in self.choices else f"is not one of: {', '.join(map(str, self.choices))}"

    def describe(self):
        return " | ".join(map(str, self.choices))


@dataclass(frozen=True)
class Form(Check):
    pattern: str
    what: str  # the form in words, for messages and `run_all.py config`

    def error(self, value):
        return None if re.fullmatch(self.pattern, value) else f"is not {self.what}"

    def describe(self):
        return self.what


@dataclass(frozen=True)
class Free(Check):
    """Any value of the key's type (text, a flag, a path: checked where it is used)."""
    what: str = "any"

    def error(self, value):
        return None

    def describe(self):
        return self.what


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


POS = Range(0, None, lo_open=True)  # > 0
NONNEG = Range(0)  # >= 0
ATLEAST1 = Range(1)  # >= 1 (counts)
UNIT = Range(0, 1, hi_open=True)  # [0, 1): probabilities and rates that must leave something
CLOSED_UNIT = Range(0, 1)  # [0, 1]
BETAS = Each(Range(0, 1, hi_open=True), 2)
POOL = OneOf(("cls", "avg"))
TEXT = Free("text")
FLAG = Free("true | false")
# timm's RandAugment spec: 'rand' then -m<magnitude>, -n<ops>, -mstd<std>, -mmax<max>, -inc<0|1>, -p<prob>.
# timm silently ignores a section it cannot parse ('rand-m9-bogus' is 'rand-m9'), so the form is ours.
RANDAUG = Form(r"rand(-(m\d+(\.\d+)?|n\d+|mstd\d+(\.\d+)?|mmax\d+(\.\d+)?|inc[01]|p(0?\.\d+|1(\.0+)?|0)))*",
               "a RandAugment spec like rand-m9-mstd0.5-inc1 (sections -m -n -mstd -mmax -inc -p), or none")


@dataclass(frozen=True)
class Setting:
    help: str  # one line
    check: Check
    source: str = ""  # the paper's table or section a recipe value comes from


S = Setting
SETTINGS: dict[str, Setting] = {
    # ---- model: encoder (A.1), masking (section 3), decoder (Table 1a/1b), target (Table 1d)
    # arch, mask_strategy, target: their allowed values are the names registered in core.registry
    "model.arch": S("encoder size (ViT-B/L/H and tiny CPU variants; core/archs.py)", TEXT, "A.1"),
    "model.img_size": S("input resolution in pixels; a multiple of the patch size", ATLEAST1, "A.1"),
    "model.decoder_depth": S("decoder Transformer blocks (0: a linear head only)", NONNEG, "Table 1a"),
    "model.decoder_embed_dim": S("decoder width; a multiple of decoder_num_heads and of 4", ATLEAST1, "Table 1b"),
    "model.decoder_num_heads": S("decoder attention heads", ATLEAST1, "A.1"),
    "model.mask_ratio": S("fraction of patches masked", Range(0, 1, True, True), "Figure 5"),
    "model.mask_strategy": S("how masked patches are sampled (core/masking.py)", TEXT, "Table 1f"),
    "model.mask_token_in_encoder": S("feed mask tokens to the encoder (True) or skip them (paper)", FLAG, "Table 1c"),
    "model.target": S("reconstruction target (core/targets/)", TEXT, "Table 1d"),
    "model.loss_on_all_patches": S("loss on every patch instead of the masked ones only", FLAG, "section 4"),
    # ---- data
    "data.dataset": S("which images", OneOf(("digits", "scenes", "imagefolder", "synthetic"))),
    "data.path": S("ImageFolder root with train/ and val/, or .beton folder/file (backend=ffcv)", Free("a path")),
    "data.backend": S("how images are loaded", OneOf(("torchvision", "ffcv"))),
    "data.augmentation": S("pretraining augmentation set",
                           OneOf(("none", "crop_fixed", "crop_rand", "crop_color_jitter")), "Table 1e"),
    "data.num_workers": S("data loader worker processes", NONNEG),
    "data.mean": S("per-channel normalisation mean", Each(Range(), 3)),
    "data.std": S("per-channel normalisation std", Each(Range(0, 1e6, lo_open=True), 3)),
    "data.on_corrupt": S("an unreadable image is skipped and counted, or stops the run", OneOf(("skip", "error"))),
    "data.ffcv_os_cache": S("ffcv: read through the OS page cache instead of its own", FLAG),
    "data.synthetic_size": S("images per split of the synthetic test dataset", ATLEAST1),
    "data.fingerprint": S("content fingerprint of an imagefolder/.beton dataset, filled in by the suite "
                          "(core/fingerprint.py); in the run id instead of data.path",
                          Form(r"([0-9a-f]{16})?", "16 hex digits or empty (set by the suite)")),
    # ---- pretraining (Table 8)
    "pretrain.epochs": S("pretraining epochs", ATLEAST1, "Table 8"),
    "pretrain.warmup_epochs": S("linear warm-up epochs", NONNEG, "Table 8"),
    "pretrain.batch_size": S("effective batch over all devices and accumulation steps", ATLEAST1, "Table 8"),
    "pretrain.accum_iter": S("gradient accumulation steps per optimizer step", ATLEAST1),
    "pretrain.blr": S("base learning rate; lr = blr x batch_size / 256", POS, "Table 8"),
    "pretrain.lr": S("absolute learning rate (none: from blr)", POS, "Table 8"),
    "pretrain.min_lr": S("floor of the cosine schedule", NONNEG),
    "pretrain.weight_decay": S("AdamW weight decay (not on biases and norms)", NONNEG, "Table 8"),
    "pretrain.betas": S("AdamW betas", BETAS, "Table 8"),
    "pretrain.clip_grad": S("gradient norm clip (none: no clipping)", POS),
    "pretrain.precision": S("autocast precision (auto: bf16 where native, else fp32/fp16)",
                            OneOf(("auto", "fp32", "bf16", "fp16"))),
    "pretrain.compile": S("torch.compile the model", FLAG),
    "pretrain.checkpoint_every": S("epochs between checkpoints (and at the end)", ATLEAST1),
    "pretrain.keep_checkpoints": S("checkpoints kept; the previous one is the fallback", ATLEAST1),
    "pretrain.log_every": S("optimizer steps between host syncs (loss read, finiteness check)", ATLEAST1),
    "pretrain.seed": S("seed of init, masks, augmentation and data order", NONNEG),
    # ---- linear probing (Table 10)
    "eval.linprobe.epochs": S("linear-probe epochs", ATLEAST1, "Table 10"),
    "eval.linprobe.warmup_epochs": S("linear-probe warm-up epochs", NONNEG, "Table 10"),
    "eval.linprobe.batch_size": S("linear-probe batch", ATLEAST1, "Table 10"),
    "eval.linprobe.blr": S("LARS base learning rate", POS, "Table 10"),
    "eval.linprobe.accum_iter": S("gradient accumulation steps (batch_size is the effective batch)", ATLEAST1),
    "eval.linprobe.weight_decay": S("LARS weight decay", NONNEG, "Table 10"),
    "eval.linprobe.pool": S("feature: class token or average of patch tokens", POOL),
    "eval.linprobe.augment": S("train with RandomResizedCrop + flip (False: features computed once)", FLAG,
                               "Table 10"),
    # ---- end-to-end fine-tuning (Table 9)
    "eval.finetune.epochs": S("fine-tuning epochs", ATLEAST1, "Table 9"),
    "eval.finetune.warmup_epochs": S("fine-tuning warm-up epochs", NONNEG, "Table 9"),
    "eval.finetune.batch_size": S("fine-tuning batch", ATLEAST1, "Table 9"),
    "eval.finetune.blr": S("AdamW base learning rate", POS, "Table 9"),
    "eval.finetune.accum_iter": S("gradient accumulation steps (batch_size is the effective batch)", ATLEAST1),
    "eval.finetune.min_lr": S("floor of the cosine learning-rate schedule (official fine-tuning code: 1e-6)", NONNEG),
    "eval.finetune.layer_decay": S("layer-wise learning-rate decay", CLOSED_UNIT, "Table 9"),
    "eval.finetune.weight_decay": S("AdamW weight decay", NONNEG, "Table 9"),
    "eval.finetune.betas": S("AdamW betas", BETAS, "Table 9"),
    "eval.finetune.drop_path": S("stochastic depth rate", UNIT, "Table 9"),
    "eval.finetune.mixup": S("mixup alpha (0: off)", NONNEG, "Table 9"),
    "eval.finetune.cutmix": S("cutmix alpha (0: off)", NONNEG, "Table 9"),
    "eval.finetune.smoothing": S("label smoothing", UNIT, "Table 9"),
    "eval.finetune.reprob": S("random erasing probability", CLOSED_UNIT),
    "eval.finetune.randaug": S("RandAugment spec (none: off)", RANDAUG, "Table 9"),
    "eval.finetune.crop_scale": S("RandomResizedCrop area range", Each(Range(0, 1, lo_open=True), 2)),
    "eval.finetune.pool": S("classifier input: average of patch tokens or class token", POOL),
    "eval.finetune.blocks": S("partial fine-tuning: train only the last k blocks (none: all)", NONNEG, "Figure 9"),
    # ---- kNN (not in the paper)
    "eval.knn.k": S("neighbours voting", ATLEAST1),
    "eval.knn.temperature": S("softmax temperature of the votes", POS),
    "eval.knn.batch_size": S("feature-extraction batch", ATLEAST1),
    "eval.knn.pool": S("feature: class token or average of patch tokens", POOL),
    # ---- supervised ViT from scratch (Table 11)
    "eval.scratch.epochs": S("training epochs", ATLEAST1, "Table 11"),
    "eval.scratch.warmup_epochs": S("warm-up epochs", NONNEG, "Table 11"),
    "eval.scratch.batch_size": S("batch", ATLEAST1, "Table 11"),
    "eval.scratch.blr": S("AdamW base learning rate", POS, "Table 11"),
    "eval.scratch.accum_iter": S("gradient accumulation steps (batch_size is the effective batch)", ATLEAST1),
    "eval.scratch.min_lr": S("floor of the cosine learning-rate schedule (official fine-tuning code: 1e-6)", NONNEG),
    "eval.scratch.weight_decay": S("AdamW weight decay", NONNEG, "Table 11"),
    "eval.scratch.betas": S("AdamW betas", BETAS, "Table 11"),
    "eval.scratch.ema": S("exponential moving average of the weights", UNIT, "Table 11"),
    "eval.scratch.drop_path": S("stochastic depth rate", UNIT, "Table 11"),
    "eval.scratch.mixup": S("mixup alpha (0: off)", NONNEG, "Table 11"),
    "eval.scratch.cutmix": S("cutmix alpha (0: off)", NONNEG, "Table 11"),
    "eval.scratch.smoothing": S("label smoothing", UNIT, "Table 11"),
    "eval.scratch.reprob": S("random erasing probability (Table 11 lists none)", CLOSED_UNIT, "Table 11"),
    "eval.scratch.randaug": S("RandAugment spec (none: off)", RANDAUG, "Table 11"),
    "eval.scratch.crop_scale": S("RandomResizedCrop area range", Each(Range(0, 1, lo_open=True), 2)),
    "eval.scratch.pool": S("classifier input: average of patch tokens or class token", POOL),
    "eval.seed": S("seed of every evaluation", NONNEG),
    "eval.recipe": S("fine-tune recipe by model size: paper (Table 9) or official (the released FINETUNE.md)",
                     OneOf(("paper", "official")), "Table 9"),
    # ---- where things go
    "run.preset": S("name of the preset (set by --preset)", TEXT),
    "run.results_dir": S("run records go to <results_dir>/runs/", Free("a path")),
    "run.work_dir": S("checkpoints go to <work_dir>/<run id>/", Free("a path")),
    "run.device": S("device to train on", OneOf(("auto", "cpu", "cuda"))),
    # ---- SLURM (docs/cluster.md); never part of a run id
    "cluster.executor": S("where submit runs jobs (auto: slurm if sbatch is on PATH)",
                          OneOf(("auto", "slurm", "local", "debug"))),
    "cluster.partition": S("sbatch --partition ('' = the site's default)", TEXT),
    "cluster.account": S("sbatch --account", TEXT),
    "cluster.qos": S("sbatch --qos", TEXT),
    "cluster.constraint": S("sbatch --constraint", TEXT),
    "cluster.nodes": S("nodes per job", ATLEAST1),
    "cluster.gpus_per_node": S("GPUs per node (0 only for CPU jobs)", NONNEG),
    "cluster.tasks_per_node": S("processes per node (0: one per GPU)", NONNEG),
    "cluster.cpus_per_task": S("CPUs per process", ATLEAST1),
    "cluster.mem": S("sbatch --mem, e.g. 480G ('' = the site's default)", Form(r"(\d+[KMGT]?)?", "a size like 480G")),
    "cluster.time": S("time limit per job, sbatch --time format", TEXT),
    "cluster.array_parallelism": S("array tasks running at once", ATLEAST1),
    "cluster.signal_delay_s": S("seconds before the time limit the job saves and requeues", NONNEG),
    "cluster.max_requeues": S("requeues per job (time-outs and preemptions)", NONNEG),
    "cluster.sbatch": S("other sbatch options as KEY=VALUE", Free("KEY=VALUE items")),
    "cluster.job_dir": S("submitit logs and pickles ('' = <results_dir>/sweeps/<preset>/jobs)", Free("a path")),
    "cluster.python": S("the jobs' interpreter ('' = this one)", Free("a path")),
    "cluster.sustained_tflops": S("per-GPU TFLOP/s for GPU-hour estimates", POS),
}
del S


def check(key: str, value, setting: Setting | None = None) -> str | None:
    """One line naming the key and what is wrong with `value`, or None if it is allowed. `setting`: its
    declaration where it is not in SETTINGS (core.config.setting: a component's Param)."""
    if value is None or isinstance(value, bool):  # an Optional key's None; flags take both values
        return None
    setting = setting or SETTINGS.get(key)
    if setting is None:
        return f"{key} has no declaration in core/settings.py SETTINGS"
    bad = setting.check.error(value)
    return f"{key}={value!r} {bad}" if bad and bad.startswith("is not") else (f"{key} {bad}" if bad else None)
