"""The paper's curves and Table 2 as figures, ours beside the paper's.

Ours and the paper's sit in separate panels: a small preset's accuracies and x values (epochs,
blocks) live on other scales than ViT-L on ImageNet. Ours carry error bars over seeds: the 95 % Student's t
interval of the mean (core/report/intervals.py; a sample std would understate it at three seeds). Every
function reads the joined tables of core/report/tables.py, so a figure shows the numbers its table
shows, and returns the matplotlib Figure (the tests inspect it; save() writes it).
"""
from __future__ import annotations

import numpy as np

from core.report.collect import METRICS
from core.report.intervals import halfwidth
from core.report.paper import model_name, source_name
from core.report.tables import source_order
from plots.style import PAPER_COLOUR, colour, figure

ACCURACY = ("ft_top1", "linprobe_top1", "knn_top1")
ACC_LABEL = "top-1 accuracy (%)"


def t_halfwidth(d) -> np.ndarray:
    """Error bars of a summary's rows: the half-width of the t interval of each mean (0 for one seed)."""
    return halfwidth(d["std"].to_numpy(float), d["n"].to_numpy(float))


def _x(labels) -> np.ndarray:
    """Numeric x from variant labels ('0.75', '20'); categorical positions if any is not a number."""
    try:
        return np.array([float(v) for v in labels])
    except (TypeError, ValueError):
        return np.arange(len(labels), dtype=float)


def _empty(ax, text: str):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=PAPER_COLOUR)


def _main_model(frame) -> str:
    return frame.model[frame.ours_variant.notna()].mode().iloc[0] if frame.ours_variant.notna().any() \
        else frame.model.mode().iloc[0]


def curve_figure(table, abl, preset: str):
    """Figures 5, 7 and 9: accuracy vs the ablated setting. Left: ours (mean and t interval over seeds);
    right: the paper's curves (for Figure 9 also MoCo v3's)."""
    f = table.frame
    fig, axes = figure(2)
    ax, axp = axes[0]
    ours = f[(f.series == "ours") & f.ours_variant.notna() & (f.n > 0) & f.metric.isin(ACCURACY)]
    for m in [m for m in ACCURACY if m in set(ours.metric)]:
        d = ours[ours.metric == m]
        x = _x(d.ours_variant)
        order = np.argsort(x)
        ax.errorbar(x[order], d["mean"].to_numpy()[order], yerr=t_halfwidth(d)[order],
                    marker="o", capsize=3, color=colour(ACCURACY.index(m)), label=METRICS[m][1])
    if len(ours):
        ax.legend()
    else:
        _empty(ax, "no finished runs yet")
    ax.set(xlabel=f"{abl.x_label or abl.name} (ours)", ylabel=ACC_LABEL, title=f"ours, preset {preset}")
    model = _main_model(f)
    paper = f[f.paper.notna() & (f.model == model) & f.metric.isin(ACCURACY)]
    for (series, m), d in paper.groupby(["series", "metric"], sort=False):
        x = _x(d.paper_variant)
        order = np.argsort(x)
        mae = series == "ours"
        ax_label = f"{'MAE' if mae else series}: {METRICS[m][1]}"
        axp.plot(x[order], d.paper.to_numpy()[order], marker="s" if mae else "^", ls="-" if mae else "--",
                 color=colour(ACCURACY.index(m)) if mae else PAPER_COLOUR, label=ax_label)
    if len(paper):
        axp.legend()
    else:
        _empty(axp, "not in the paper")
    axp.set(xlabel=f"{abl.x_label or abl.name} (paper)", ylabel=ACC_LABEL,
            title=f"paper, {model_name(model)} on ImageNet-1K")
    fig.suptitle(f"{source_name(abl.source)}: {abl.title}")
    fig.tight_layout()
    return fig


def table2_figure(table, measured=None, preset: str = "tiny"):
    """Table 2 as bars: our pretraining hours (mean and t interval over seeds; speed-up over the encoder with mask
    tokens on top), the paper's hours for ViT-L and ViT-H, and bench/wallclock.py's step times."""
    f = table.frame
    fig, axes = figure(3 if measured is not None and len(measured.frame) else 2)
    ax, axp = axes[0][0], axes[0][1]
    hours = f[(f.series == "ours") & (f.metric == "hours") & f.ours_variant.notna()]
    speed = f[(f.series == "ours") & (f.metric == "speedup")].set_index("ours_variant")
    done = hours[hours.n > 0]
    if len(done):
        x = np.arange(len(done))
        bars = ax.bar(x, done["mean"], yerr=t_halfwidth(done), capsize=3, color=colour(0))
        for b, v in zip(bars, done.ours_variant):
            s = speed["mean"].get(v)
            if s is not None and np.isfinite(s):
                ax.annotate(f"{s:.2f}×", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", xytext=(0, 3), textcoords="offset points")
        ax.set_xticks(x, done.ours_variant, rotation=20)
        ax.margins(y=0.15)  # room for the speed-up labels
    else:
        _empty(ax, "no finished runs yet")
    ax.set(ylabel="pretraining hours", title=f"ours, preset {preset} (speed-up on top)")
    paper = f[(f.metric == "hours") & f.paper.notna()]
    variants = list(dict.fromkeys(paper.paper_variant))
    models = list(dict.fromkeys(paper.model))
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        d = paper[paper.model == m].set_index("paper_variant").paper.reindex(variants)
        axp.bar(np.arange(len(variants)) + (i - (len(models) - 1) / 2) * width, d.to_numpy(), width,
                color=colour(i + 1), label=model_name(m))
    axp.set_xticks(np.arange(len(variants)), variants, rotation=20)
    axp.set(ylabel="pretraining hours", title="paper (128 TPU-v3 cores, 800 epochs)")
    if models:
        axp.legend()
    if measured is not None and len(measured.frame):
        axm = axes[0][2]
        d = measured.frame
        variants = list(dict.fromkeys(d.variant))
        models = list(dict.fromkeys(d.model))
        width = 0.8 / max(len(models), 1)
        for i, m in enumerate(models):
            v = d[d.model == m].set_index("variant").ms_per_step.reindex(variants).astype(float)
            axm.bar(np.arange(len(variants)) + (i - (len(models) - 1) / 2) * width, v.to_numpy(), width,
                    color=colour(i + 1), label=model_name(str(m)))
        axm.set_xticks(np.arange(len(variants)), variants, rotation=20)
        axm.set(ylabel="ms per step", title="measured step time (bench/wallclock.py)")
        axm.legend()
    fig.suptitle("Table 2: wall-clock pretraining time")
    fig.tight_layout()
    return fig


def loss_figure(curves: dict, abl, preset: str):
    """Pretraining loss per epoch for each variant: mean over seeds, a band of ± one std."""
    fig, axes = figure(1, width=5.0)
    ax = axes[0][0]
    drawn = 0
    for i, (variant, runs) in enumerate(curves.items()):
        if not runs:
            continue
        n = min(len(r) for r in runs)  # seeds of unequal length: the common epochs
        arr = np.array([r[:n] for r in runs])
        epochs = np.arange(1, n + 1)
        mean = arr.mean(axis=0)
        ax.plot(epochs, mean, color=colour(i), label=f"{variant} (n={len(runs)})")
        if len(runs) > 1:
            std = arr.std(axis=0, ddof=1)
            ax.fill_between(epochs, mean - std, mean + std, color=colour(i), alpha=0.2, lw=0)
        drawn += 1
    if drawn:
        ax.legend(title=abl.x_label or abl.name)
    else:
        _empty(ax, "no finished pretraining runs yet")
    ax.set(xlabel="epoch", ylabel="pretraining loss (mean over the epoch)",
           title=f"{source_name(abl.source)}: {abl.title}, preset {preset}")
    fig.tight_layout()
    return fig


def all_figures(res, tables) -> list[tuple[str, object]]:
    """(file name, Figure) for every curve ablation, Table 2 and each ablation's loss curves."""
    by_ablation = {t.ablation: t for t in tables if t.ablation}
    measured = next((t for t in tables if t.id == "table2_measured"), None)
    ablations = sorted(res.ablations.values(), key=lambda a: source_order(a.source))  # the paper's order
    out = []
    for abl in ablations:
        t = by_ablation.get(abl.name)
        if t is not None and abl.display == "curve":
            out.append((t.id, curve_figure(t, abl, res.preset)))
        if t is not None and "hours" in abl.metrics:
            out.append((t.id, table2_figure(t, measured, res.preset)))
    for abl in ablations:
        if abl.pretrain:
            out.append((f"loss_{abl.name}", loss_figure(res.losses(abl.name), abl, res.preset)))
    return out
