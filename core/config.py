"""The one config surface: typed dataclasses, `key=value` overrides, validation and run ids.

The dataclass defaults ARE the paper recipe (ViT-L/16, ImageNet, MAE Table 8); every preset
(core/presets.py) is a short dict of overrides on top of them, so a preset reads as exactly what it
changes.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Optional

from core.cluster.checks import check_cluster_config
from core.errors import ConfigError
from core.presets import FINETUNE_RECIPES, PRESETS, SCALED
from core.registry import ARCHS, MASKS, TARGETS, Registered, component_params
from core.settings import SETTINGS, Setting
from core.settings import check as check_setting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vit_large_patch16"  # encoder size, registered in core.registry.ARCHS (core/archs.py)
    img_size: int = 224
    decoder_depth: int = 8
    decoder_embed_dim: int = 512
    decoder_num_heads: int = 16
    mask_ratio: float = 0.75
    mask_strategy: str = "random"  # registered in core.registry.MASKS (core/masking.py)
    mask_token_in_encoder: bool = False  # Table 1c: True feeds mask tokens to the encoder
    target: str = "pixel"  # registered in core.registry.TARGETS; Table 1 baseline: unnormalised pixels
    loss_on_all_patches: bool = False  # paper: loss on masked patches only
    # The components' own settings (core.registry.Param, declared beside each component: model.pca_components,
    # model.dvae_vocab, a plugin's model.lowpass_sigma, ...): the ones set away from their default, as
    # sorted (name, value) pairs. Read as attributes, cfg.model.pca_components, defaults included.
    params: tuple = ()

    def __getattr__(self, name):  # only names that are not fields: a component's setting
        if name.startswith("__") or name == "params":  # copy and pickle probe these before params is set
            raise AttributeError(name)
        value = dict(self.params).get(name, _MISSING)
        if value is not _MISSING:
            return value
        declared = component_params().get(f"model.{name}")
        if declared is None:
            raise AttributeError(f"ModelConfig has no setting {name!r} (no field, no registered component declares "
                                 f"model.{name})")
        return declared[2].default


MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "imagefolder"  # digits | scenes | imagefolder | synthetic
    path: str = ""  # ImageFolder root holding train/ and val/ (or a .beton for backend=ffcv)
    backend: str = "torchvision"  # torchvision | ffcv
    augmentation: str = "crop_rand"  # none | crop_fixed | crop_rand | crop_color_jitter
    num_workers: int = 10
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    on_corrupt: str = "skip"  # skip (and count) | error (stop naming the file)
    ffcv_os_cache: bool = False
    synthetic_size: int = 512  # images per split of the synthetic test dataset
    fingerprint: str = ""  # the dataset's content, filled in by core.fingerprint.resolve; "" = none needed


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 800
    warmup_epochs: int = 40
    batch_size: int = 4096  # effective batch over all devices and accumulation steps
    accum_iter: int = 1
    blr: float = 1.5e-4  # lr = blr * batch_size / 256 unless lr is set
    lr: Optional[float] = None
    min_lr: float = 0.0
    weight_decay: float = 0.05  # not applied to biases, norms and other 1-D parameters
    betas: tuple = (0.9, 0.95)
    clip_grad: Optional[float] = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    checkpoint_every: int = 20  # epochs; also at the end of the run
    keep_checkpoints: int = 2  # the previous one is the fallback if the newest is damaged
    log_every: int = 50  # steps between host syncs (loss read, finiteness check)
    seed: int = 0


@dataclass(frozen=True)
class LinprobeConfig:  # paper Table 10
    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int = 16384
    blr: float = 0.1
    weight_decay: float = 0.0
    pool: str = "cls"  # cls | avg
    augment: bool = True  # False: resize + center crop for training too, so features are computed once
    accum_iter: int = 1  # batch_size is the effective batch: per process batch_size / processes / accum_iter


@dataclass(frozen=True)
class FinetuneConfig:  # paper Table 9 (ViT-L/H: 50 epochs)
    epochs: int = 50
    warmup_epochs: int = 5
    batch_size: int = 1024
    blr: float = 1e-3
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    reprob: float = 0.25
    randaug: Optional[str] = "rand-m9-mstd0.5-inc1"  # timm's RandAugment spec; None: none
    crop_scale: tuple = (0.08, 1.0)  # RandomResizedCrop area range (timm's default, as the paper's code)
    pool: str = "avg"  # avg | cls
    blocks: Optional[int] = None  # partial fine-tuning: train only the last k blocks
    accum_iter: int = 1  # batch_size is the effective batch: per process batch_size / processes / accum_iter
    min_lr: float = 1e-6  # the cosine schedule's floor, as the official fine-tuning code


@dataclass(frozen=True)
class KnnConfig:
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256
    pool: str = "cls"  # cls | avg


@dataclass(frozen=True)
class ScratchConfig:  # paper Appendix A.2, supervised ViT-L from scratch
    epochs: int = 200
    warmup_epochs: int = 20
    batch_size: int = 4096
    blr: float = 1e-4
    weight_decay: float = 0.3
    betas: tuple = (0.9, 0.95)
    ema: float = 0.9999
    drop_path: float = 0.2
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    reprob: float = 0.0  # Table 11 lists no random erasing
    randaug: Optional[str] = "rand-m9-mstd0.5-inc1"
    crop_scale: tuple = (0.08, 1.0)
    pool: str = "avg"  # avg | cls
    accum_iter: int = 1
    min_lr: float = 1e-6  # the official fine-tuning code's floor (the baseline is trained by that code)


@dataclass(frozen=True)
class EvalConfig:
    linprobe: LinprobeConfig = field(default_factory=LinprobeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    seed: int = 0
    # Fine-tune settings by model size (FINETUNE_RECIPES): the paper's Table 9, or "official", the
    # recipes released with the official code. A preset's or the command line's own values win.
    recipe: str = "paper"


@dataclass(frozen=True)
class RunConfig:
    preset: str = "paper"
    results_dir: str = "results"  # run records go to <results_dir>/runs/
    work_dir: str = "work"  # checkpoints go to <work_dir>/<run_id>/
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class ClusterConfig:
    """Where `run_all.py submit` runs its jobs (docs/cluster.md). Never part of a run id."""
    executor: str = "auto"  # auto (slurm when sbatch is on PATH, else local) | slurm | local | debug
    partition: str = ""  # "" = the site's default; likewise account, qos, constraint, mem
    account: str = ""
    qos: str = ""
    constraint: str = ""
    nodes: int = 8  # the official recipe: 8 nodes x 8 GPUs, 64 images per GPU = batch 4096
    gpus_per_node: int = 8  # 0 only for CPU jobs (run.device=cpu)
    tasks_per_node: int = 0  # processes per node; 0 = one per GPU (one for CPU jobs)
    cpus_per_task: int = 10
    mem: str = ""  # sbatch --mem, e.g. 480G
    time: str = "48:00:00"  # per job, in sbatch --time format; longer runs requeue themselves
    array_parallelism: int = 256  # array tasks running at once
    signal_delay_s: int = 120  # USR2 this long before the time limit: finish the step, save, requeue
    max_requeues: int = 20  # per job, time-outs and preemptions together
    sbatch: tuple = ()  # any other sbatch option as KEY=VALUE (KEY= for a flag), e.g. ("exclusive=",)
    job_dir: str = ""  # submitit's logs and pickles (shared filesystem); "" = <results_dir>/sweeps/<preset>/jobs
    python: str = ""  # the jobs' interpreter; "" = the one running run_all.py
    sustained_tflops: float = 13.2  # per GPU, for GPU-hour estimates: ViT-L MAE on V100 (docs/cluster.md)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # not in run ids: see pretrain_identity

    def to_dict(self) -> dict:
        """Plain data; the model section holds the settings of the components it selects and any set."""
        d = _plain(dataclasses.asdict(self))
        params = dict(d["model"].pop("params"))
        d["model"].update({key.split(".", 1)[1]: _plain(getattr(self.model, key.split(".", 1)[1]))
                           for key, owner in component_params().items()
                           if _selected(d["model"], owner) or key.split(".", 1)[1] in params})
        return d

    def run_id(self) -> str:
        """Id of the pretraining run: a hash of every setting that can change its weights."""
        return "pt-" + config_hash(self.pretrain_identity())

    def pretrain_identity(self) -> dict:
        d = self.to_dict()
        params = component_params()
        ident = {}
        for section in ("model", "data", "pretrain"):
            values = {k: v for k, v in d[section].items() if f"{section}.{k}" not in NOT_IDENTITY}
            ident[section] = identity(values, f"{section}.")
        for key, owner in params.items():  # a component's setting counts only where it is used
            section, name = key.split(".", 1)
            if not _selected(d["model"], owner) or (owner[2].applies and not owner[2].applies(d[section])):
                ident[section].pop(name, None)
        return ident

    @property
    def lr(self) -> float:
        p = self.pretrain
        return p.lr if p.lr is not None else p.blr * p.batch_size / 256


# Settings that do not change what a run computes: where files go, how often we log, how the
# data is fetched. Runs that differ only in these are the same run.
NOT_IDENTITY = (
    "data.path", "data.num_workers", "data.ffcv_os_cache", "data.on_corrupt",
    "pretrain.compile", "pretrain.checkpoint_every", "pretrain.keep_checkpoints", "pretrain.log_every",
)


# THE rule that keeps run ids when settings are added. ID_KEYS is the frozen list of the keys that
# every id hashed when ids were first computed: they stay in an id at any value, so existing ids keep
# their hash. Any key not in it (a dataclass field added later, a component's declared parameter, a
# plugin's) enters an id only when its value differs from its default: a new setting at its default
# never moves an id, and a run that changes it is a new run. Never edit ID_KEYS; a new key needs nothing.
# (data.fingerprint and the eval sections' accum_iter were added later: at their default, "" and 1,
# they stay out, as they always did.)
ID_KEYS = frozenset(f"{section}.{name}" for section, names in {
    "model": "arch img_size decoder_depth decoder_embed_dim decoder_num_heads mask_ratio mask_strategy "
             "mask_token_in_encoder target loss_on_all_patches pca_components pca_samples dvae_vocab dvae_width "
             "dvae_epochs dvae_path",
    "data": "dataset backend augmentation mean std synthetic_size",
    "pretrain": "epochs warmup_epochs batch_size accum_iter blr lr min_lr weight_decay betas clip_grad precision seed",
    "eval.linprobe": "epochs warmup_epochs batch_size blr weight_decay pool augment",
    "eval.finetune": "epochs warmup_epochs batch_size blr layer_decay weight_decay betas drop_path mixup cutmix "
                     "smoothing reprob randaug crop_scale pool blocks min_lr",
    "eval.knn": "k temperature batch_size pool",
    "eval.scratch": "epochs warmup_epochs batch_size blr weight_decay betas ema drop_path mixup cutmix smoothing "
                    "reprob randaug crop_scale pool min_lr",
}.items() for name in names.split())
_MISSING = object()


def identity(values: dict, prefix: str) -> dict:
    """The part of one config section (`prefix`: "model.", "eval.linprobe.", ...) that enters an id."""
    default = defaults()
    return {k: v for k, v in values.items()
            if prefix + k in ID_KEYS or _plain(v) != default.get(prefix + k, _MISSING)}


def defaults() -> dict:
    """Every key's default: the dataclasses' and every registered component parameter's."""
    flat = _flat(_plain(dataclasses.asdict(Config())))
    flat.pop("model.params")
    flat.update({key: _plain(owner[2].default) for key, owner in component_params().items()})
    return flat


def _selected(model: dict, owner: tuple) -> bool:
    """Whether the model section selects the component that declares a parameter."""
    registry, name, _ = owner
    return model.get(registry.key.split(".", 1)[1]) == name


def config_hash(obj) -> str:
    blob = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _plain(obj):
    """JSON-able copy: tuples become lists, so a checkpoint holds plain data only."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def recipe_values(recipe: str, arch: str) -> dict:
    """The eval.finetune.* settings recipe `recipe` gives encoder `arch` ({} for unlisted ones)."""
    if recipe not in FINETUNE_RECIPES:
        raise ConfigError(f"eval.recipe={recipe!r} is not one of: {', '.join(FINETUNE_RECIPES)}")
    return {f"eval.finetune.{k}": v for k, v in FINETUNE_RECIPES[recipe].get(arch, {}).items()}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def build_config(preset: str = "tiny", overrides: typing.Iterable[str] = (), values: dict | None = None) -> Config:
    """Preset, then `key=value` strings, then a dict of values -> a validated, frozen Config."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(preset_names())}")
    merged = dict(PRESETS[preset])
    for item in overrides:
        key, value = parse_override(item)
        merged[key] = value
    merged.update(values or {})
    cfg = apply_overrides(Config(), merged)
    recipe = recipe_values(cfg.eval.recipe, cfg.model.arch)  # below the preset's and the user's values
    if recipe:
        cfg = apply_overrides(Config(), {**recipe, **merged})
    # the rehearsal's miniature schedules, after the variant set them
    cfg = apply_overrides(cfg, {k: -(-value_of(cfg, k) // d) for k, d in SCALED.get(preset, {}).items()})
    validate(cfg)
    return cfg


def parse_override(item: str) -> tuple[str, typing.Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key, Raw(raw.strip())


class Raw(str):
    """A value as typed on the command line, parsed only once its setting's type is known."""


def _literal(raw: str):
    """Parse a value as a Python literal (never evaluated as code); anything else is a string."""
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def _unquote(raw: str) -> str:
    """'text' and "text" (as a shell or repr() gives them) are the text itself."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = _literal(raw)
        if isinstance(value, str):
            return value
    return raw


def all_keys(cls=Config, prefix="") -> dict[str, typing.Any]:
    """Every settable dotted key with its type annotation; the components' declared parameters too."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(all_keys(tp, prefix + f.name + "."))
        elif not (cls is ModelConfig and f.name == "params"):
            out[prefix + f.name] = tp
    if cls is ModelConfig:
        for key, (registry, name, p) in component_params().items():
            if not key.startswith("model.") or key[len("model."):] in MODEL_FIELDS:  # the model section holds them
                raise ConfigError(f"{registry.kind} {name!r} declares {key}: a component's setting must be a new "
                                  "model.<name> key")
            out[key] = p.type
    return out


def setting(key: str) -> Setting:
    """The declaration of a key: core.settings.SETTINGS, a registry's names for the keys that select a
    component, a component's Param for its own settings. One line if there is none."""
    for registry in (ARCHS, MASKS, TARGETS):
        if key == registry.key:
            return dataclasses.replace(SETTINGS[key], check=Registered(registry))
    if key in SETTINGS:
        return SETTINGS[key]
    if key in component_params():
        return component_params()[key][2].setting
    raise ConfigError(f"{key} has no declaration: a config field needs an entry in core/settings.py SETTINGS "
                      "(a component's own setting is a Param of its registration, docs/extending.md)")


def apply_overrides(cfg: Config, values: dict) -> Config:
    keys = all_keys()
    for key, value in values.items():
        if key not in keys:
            near = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        cfg = _set(cfg, key.split("."), _coerce(key, value, keys[key]))
    return cfg


def value_of(cfg: Config, key: str):
    """The value of a dotted key, a component's setting that is not in to_dict() included."""
    obj = cfg
    for name in key.split("."):
        obj = getattr(obj, name)
    return obj


def _set(obj, path, value):
    if len(path) == 1 and isinstance(obj, ModelConfig) and path[0] not in MODEL_FIELDS:  # a component's setting
        params = dict(obj.params)
        params.pop(path[0], None)
        if value != component_params()[f"model.{path[0]}"][2].default:  # only what differs: equal configs are equal
            params[path[0]] = value
        return dataclasses.replace(obj, params=tuple(sorted(params.items())))
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


def _coerce(key, value, tp):
    """Type-check one value against its annotation; ints are accepted where floats are."""
    optional = typing.get_origin(tp) is typing.Union  # Optional[X]
    if optional:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if isinstance(value, Raw):  # a str setting takes the text verbatim: "none" is an augmentation set
        keep = tp is str and not (optional and value.lower() in ("none", "null"))
        value = _unquote(str(value)) if keep else _literal(value)
    if optional and value is None:
        return None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        tuple: isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, str)) for v in value),
    }.get(tp)
    if not ok:
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{key} must be {name}, got {value!r}")
    if tp is float:
        return float(value)
    if tp is tuple:
        return tuple(value)
    return value


def validate(cfg: Config) -> None:
    """Every key against its declaration in core.settings, then the rules between keys. Raises
    ConfigError naming the key."""
    flat = _flat(cfg.to_dict())
    for key, value in flat.items():
        bad = check_setting(key, value, setting(key))
        if bad:
            raise ConfigError(bad)
    m, p = cfg.model, cfg.pretrain
    for registry in (ARCHS, MASKS, TARGETS):  # rules a component declares between itself and other keys
        entry = registry.entry(flat[registry.key])
        if entry.check:
            entry.check(cfg)
    patch = ARCHS[m.arch]["patch_size"]
    if m.img_size % patch:
        raise ConfigError(f"model.img_size={m.img_size} is not a positive multiple of the patch size {patch}")
    if m.decoder_embed_dim % m.decoder_num_heads:
        raise ConfigError(f"model.decoder_embed_dim={m.decoder_embed_dim} must be a positive multiple of "
                          f"model.decoder_num_heads={m.decoder_num_heads}")
    if m.decoder_embed_dim % 4:
        raise ConfigError(f"model.decoder_embed_dim={m.decoder_embed_dim} must be divisible by 4 (2D sin-cos embedding)")
    if p.min_lr > cfg.lr:
        raise ConfigError(f"pretrain.min_lr={p.min_lr} exceeds the learning rate {cfg.lr:g}")
    if p.warmup_epochs > p.epochs:
        raise ConfigError(f"pretrain.warmup_epochs={p.warmup_epochs} exceeds pretrain.epochs={p.epochs}")
    if p.batch_size % p.accum_iter:
        raise ConfigError(f"pretrain.batch_size={p.batch_size} is not divisible by pretrain.accum_iter={p.accum_iter}")
    for name in ("linprobe", "finetune", "scratch"):  # the effective batch splits into accum_iter steps
        sec = getattr(cfg.eval, name)
        if sec.batch_size % sec.accum_iter:
            raise ConfigError(f"eval.{name}.accum_iter={sec.accum_iter} must divide eval.{name}.batch_size="
                              f"{sec.batch_size}")
    for name in ("finetune", "scratch"):
        lo, hi = getattr(cfg.eval, name).crop_scale
        if lo > hi:
            raise ConfigError(f"eval.{name}.crop_scale=({lo}, {hi}) must be (min, max) with min <= max")
    check_batches(cfg)
    blocks = cfg.eval.finetune.blocks
    depth = ARCHS[m.arch]["depth"]
    if blocks is not None and blocks > depth:
        raise ConfigError(f"eval.finetune.blocks must be in [0, {depth}] for {m.arch}, got {blocks}")
    check_cluster_config(cfg.cluster)  # the sbatch time format and pass-through options


# Images per split where the dataset's size is known without reading it: a batch (per optimizer step)
# larger than that is refused here; for folders and .beton files it is checked when the run starts.
KNOWN_SIZES = {"digits": {"train": 1438, "val": 359}, "scenes": {"train": 1440, "val": 2130}}


# Checked for every config; the linear probe's batch (16384 in the paper) only when a probe runs
# (run_all.py's preflight): a small synthetic dataset need not fit it to pretrain.
BATCH_KEYS = ("pretrain.batch_size", "eval.finetune.batch_size", "eval.scratch.batch_size")


def check_batches(cfg: Config, keys=BATCH_KEYS) -> None:
    d = cfg.data
    n = d.synthetic_size if d.dataset == "synthetic" else KNOWN_SIZES.get(d.dataset, {}).get("train")
    if n is None:
        return
    flat = _flat(cfg.to_dict())
    for key in keys:
        batch = flat[key]
        if batch > n:
            raise ConfigError(f"{key}={batch} is larger than the {n} training images of data.dataset={d.dataset}")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def flat_dict(cfg: Config) -> dict:
    return _flat(cfg.to_dict())


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config from a record's or checkpoint's plain dict (unknown keys are errors)."""
    return apply_overrides(Config(), _flat(d))
