"""What an ablation is (a declaration, no logic) and the registry that finds them in ablations/ and
in the researcher's own folders and packages (MAE_PLUGINS, docs/extending.md).

An ablation module holds one `ABLATION = Ablation(...)`: its variants as overrides of the baseline
preset, the paper rows it reproduces, the evaluations it needs and how it is shown. Dropping a new
file into ablations/, or into a plugin folder, is all it takes to add one.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field

import ablations
from core.errors import UserError
from core.presets import PLAN_OF
from core.registry import plugin_modules

PAPER_PRESET = "paper"
SMALL_EVALS = ("linprobe", "knn")  # what small presets evaluate unless an ablation says otherwise


def follows_paper(preset: str) -> bool:
    """Whether a preset runs the paper's variants and evaluations (paper itself, the rehearsal)."""
    return PLAN_OF.get(preset, preset) == PAPER_PRESET


@dataclass(frozen=True)
class Ablation:
    name: str  # also the `ablation` column of results/paper/paper_reference.csv
    source: str  # where the paper shows it: table1a ... table2, figure5/7/9
    title: str
    variants: dict  # label -> config overrides, at the paper preset; labels are the paper's
    baseline: str  # the label of the paper's default (Table 1 grey row)
    display: str = "table"  # table | curve
    evals: tuple = ("finetune", "linprobe")  # protocols run after pretraining, paper preset
    metrics: tuple = ("ft_top1", "linprobe_top1")  # paper metrics this ablation reports
    # Small presets (tiny, ...): label -> (paper label or None if not in the paper, overrides).
    # None means: the same variants as at the paper preset.
    small_variants: dict | None = None
    small_baseline: str | None = None
    small_evals: tuple = SMALL_EVALS
    pretrain: bool = True  # False: the evaluations need no pretraining run (the scratch baseline)
    x_label: str = ""  # for curves
    notes: str = ""
    # variant label -> {protocol: the protocol whose record holds that variant's number}: Figure 9's
    # "0 blocks" is the linear probe of the same pretraining run
    substitute: dict = field(default_factory=dict)
    # protocol -> (config key, values at the paper preset): each value is run and the best top-1
    # counts (the others are kept); other presets scale the values by their own setting of the key
    # over the paper preset's, so a 15-epoch fine-tune gets 3/10 of the paper's epochs
    eval_ladder: dict = field(default_factory=dict)
    small_eval_ladder: dict | None = None  # the same at small presets, values used as they are; None: scaled
    # Base settings of every variant, under the command line's overrides (shorter schedules, another
    # dataset): part of the run ids, so `status`, `compare`, `tables` and `report` find the runs without
    # the user repeating them
    overrides: dict = field(default_factory=dict)
    # variant label -> a reference its evaluations read instead of a pretraining run (no pretraining
    # unit): "pixels" or "random" (core/eval/baselines.py)
    sources: dict = field(default_factory=dict)

    def eval_ladder_for(self, preset: str) -> tuple[dict, bool]:
        """(protocol -> (key, values), whether the values are to be scaled to the config)."""
        if follows_paper(preset) or self.small_eval_ladder is None:
            return self.eval_ladder, True
        return self.small_eval_ladder, False

    def variants_for(self, preset: str) -> dict:
        """label -> (paper label or None, overrides) at this preset."""
        if follows_paper(preset) or self.small_variants is None:
            return {label: (label, ov) for label, ov in self.variants.items()}
        return dict(self.small_variants)

    def baseline_for(self, preset: str) -> str:
        if follows_paper(preset) or self.small_baseline is None:
            return self.baseline
        return self.small_baseline

    def evals_for(self, preset: str) -> tuple:
        return self.evals if follows_paper(preset) else self.small_evals


def load_all() -> dict[str, Ablation]:
    """Every ABLATION in the ablations package, by name, in file order; then the plugins' (a plugin
    module may hold an ABLATION, a component, or both)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(ablations.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"ablations.{info.name}")
        abl = getattr(module, "ABLATION", None)
        if not isinstance(abl, Ablation):
            raise UserError(f"ablations/{info.name}.py defines no ABLATION = Ablation(...)")
        _add(found, abl, f"ablations/{info.name}.py")
    for module in plugin_modules():
        abl = getattr(module, "ABLATION", None)
        if isinstance(abl, Ablation):
            _add(found, abl, module.__file__)
    return found


def _add(found: dict, abl: Ablation, where: str) -> None:
    if abl.name in found:
        raise UserError(f"two ablation modules are named {abl.name!r} (the second: {where})")
    if abl.baseline not in abl.variants:
        raise UserError(f"ablation {abl.name}: baseline {abl.baseline!r} is not one of its variants")
    found[abl.name] = abl


def select(names: list[str]) -> list[Ablation]:
    """Ablations by name ('all' for every one); unknown names suggest the nearest ones."""
    registry = load_all()
    if not names or names == ["all"]:
        return list(registry.values())
    out = []
    for name in names:
        if name not in registry:
            near = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(registry)}"
            raise UserError(f"unknown ablation {name!r}{hint}")
        out.append(registry[name])
    return out


def ladder(key: str, pairs) -> dict:
    """Small-preset variants from (our value, paper label) pairs of one setting."""
    return {str(ours): (paper, {key: ours}) for ours, paper in pairs}


__all__ = ["Ablation", "load_all", "select", "ladder", "field"]
