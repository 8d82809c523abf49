"""Every figure of a preset into one folder: the curves and Table 2 (figures.py), loss curves,
reconstructions (reconstruction.py) and the mask-sampling picture (masks.py)."""
from __future__ import annotations

from core.errors import UserError
from core.report.paper import source_name
from plots.figures import all_figures
from plots.masks import mask_sampling_figure
from plots.reconstruction import reconstruction_figure
from plots.style import save

RECONSTRUCTION_ABLATION = "target"  # its seed-0 runs: pixel and norm_pixel models side by side


def default_reconstruction_runs(res) -> list[str]:
    """The finished lowest-seed pretraining runs of the target ablation (else of every baseline)."""
    def done(cells):
        ids = [c.pretrain_id for c in cells if c.pretrain_id]
        return [i for i in dict.fromkeys(ids) if (res.records.get(i) or {}).get("status") == "done"]

    cells = [c for c in res.plan.cells if c.ablation == RECONSTRUCTION_ABLATION]
    seed = min((c.seed for c in cells), default=0)
    return done([c for c in cells if c.seed == seed]) or done([c for c in res.plan.cells if c.is_baseline])[:1]


def caption_for(name: str, res) -> str:
    abl = next((a for a in res.ablations.values() if name in (a.source, f"{a.source}_{a.name}")), None)
    if name.startswith("loss_"):
        return (f"Pretraining loss per epoch of {name[5:]}: mean over seeds, band ± one std. Targets differ in "
                f"kind (pixels, tokens, features), so their losses are not on one scale.")
    if abl is not None and abl.display == "curve":
        return (f"{source_name(abl.source)}: ours at preset {res.preset} (left, mean ± sample std over seeds) and "
                f"the paper's ViT-L/16 on ImageNet-1K (right), each on its own axes.")
    return ("Table 2: our pretraining hours (mean ± std over seeds, speed-up over the encoder with mask tokens on "
            "top), the paper's hours, and measured step times when bench/wallclock.py has run.")


def draw_all(res, tables, out_dir: str, runs=None, log=print) -> list[dict]:
    """Write every figure as PNG and PDF; returns [{name, paths, caption}] (paths empty if skipped)."""
    items = []
    for name, fig in all_figures(res, tables):
        items.append(dict(name=name, paths=save(fig, out_dir, name), caption=caption_for(name, res)))
    for rid in (default_reconstruction_runs(res) if runs is None else runs):
        try:
            fig, caption = reconstruction_figure(res.results_dir, rid)
        except UserError as e:
            fig, caption = None, f"{rid}: no reconstruction: {e}"
        paths = save(fig, out_dir, f"reconstruction_{rid}") if fig is not None else []
        items.append(dict(name=f"reconstruction_{rid}", paths=paths, caption=caption))
        if not paths:
            log(f"skipped: {caption}")
    try:
        paths = save(mask_sampling_figure(res.cfg), out_dir, "figure6_mask_sampling")
        caption = ("Figure 6: random (75%), block-wise (50%) and grid (75%) masks of core.masking on one "
                   f"validation image of {res.cfg.data.dataset}; masked patches grey.")
    except UserError as e:
        paths, caption = [], f"Figure 6 (mask sampling) skipped: {e}"
        log(f"skipped: {caption}")
    items.append(dict(name="figure6_mask_sampling", paths=paths, caption=caption))
    return items
