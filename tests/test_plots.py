"""Figures: written, non-empty, with the expected axes and series; reconstructions of a real
checkpoint (pixel, norm_pixel), a skipped non-pixel target, and the mask-sampling picture."""
import os

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer, ErrorbarContainer

from core import checkpoint, results
from core.ablation import load_all, select
from core.model import MAE, patchify
from core.report.collect import collect
from core.report.tables import build_tables
from core.sweep import make_plan
from plots.figures import all_figures, curve_figure, loss_figure, table2_figure
from plots.style import OKABE_ITO, save
from tests.test_tables import write_sweep

ABLATIONS = ["mask_ratio", "partial_finetune", "wallclock", "epochs"]


@pytest.fixture(scope="module")
def figs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    overrides = [f"run.results_dir={tmp / 'results'}", f"run.work_dir={tmp / 'work'}"]
    plan = make_plan(select(ABLATIONS), "tiny", 2, overrides)
    write_sweep(str(tmp / "results"), plan, skip={("mask_ratio", "0.9", 0), ("mask_ratio", "0.9", 1)},
                hours=lambda c: 2.0 if c.variant.startswith("encoder") else 1.0)
    res = collect("tiny", 2, overrides, ABLATIONS)
    return res, {t.id: t for t in build_tables(res)}, tmp


def errorbars(ax):
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_figure5_ours_with_error_bars_and_paper_beside(figs):
    res, tables, _ = figs
    fig = curve_figure(tables["figure5"], load_all()["mask_ratio"], "tiny")
    ours, paper = fig.axes
    bars = errorbars(ours)
    assert len(bars) == 2  # tiny evaluates linear probe and kNN
    assert [b.get_label() for b in bars] == ["linear-probe top-1 (%)", "kNN top-1 (%)"]
    x, y = bars[0].lines[0].get_data()
    assert list(x) == [0.1, 0.3, 0.5, 0.75]  # 0.9 has no finished seed: no point, never a zero
    assert ours.get_xlabel() == "masking ratio (ours)" and ours.get_ylabel() == "top-1 accuracy (%)"
    yerr = bars[0].lines[2][0].get_segments()  # seeds 0, 1 are mean -0.5, +0.5: sample std sqrt(0.5)
    from scipy import stats  # the bar is the 95 % t interval of the mean: t(1 df) x std / sqrt(2)
    assert all(seg[1][1] - seg[0][1] == pytest.approx(2 * stats.t.ppf(0.975, 1) * 0.5 ** 0.5 / 2 ** 0.5)
               for seg in yerr)
    lines = paper.get_lines()
    assert [l.get_label() for l in lines] == ["MAE: fine-tune top-1 (%)", "MAE: linear-probe top-1 (%)"]
    assert len(lines[0].get_xdata()) == 10 and paper.get_xlabel() == "masking ratio (paper)"
    assert bars[0].lines[0].get_color() == OKABE_ITO[1] == lines[1].get_color()  # one colour per metric


def test_figure9_has_mae_and_mocov3_curves(figs):
    _, tables, _ = figs
    fig = curve_figure(tables["figure9"], load_all()["partial_finetune"], "tiny")
    ours, paper = fig.axes
    assert len(errorbars(ours)) == 1 and list(errorbars(ours)[0].lines[0].get_xdata()) == [0, 1, 2, 4]
    labels = [l.get_label() for l in paper.get_lines()]
    assert labels == ["MAE: fine-tune top-1 (%)", "MoCo v3: fine-tune top-1 (%)"]
    assert list(paper.get_lines()[1].get_ydata()) == [77.6, 79.9, 80.8, 81.6, 81.9, 83.2, 83.8, 84.1]


def test_table2_bars(figs):
    _, tables, _ = figs
    fig = table2_figure(tables["table2"], None, "tiny")
    ours, paper = fig.axes
    ours_bars = [c for c in ours.containers if isinstance(c, BarContainer)]
    assert len(ours_bars) == 1 and [p.get_height() for p in ours_bars[0]] == pytest.approx([2.0, 1.0, 1.0])
    assert [t.get_text() for t in ours.texts] == ["1.00×", "2.00×", "2.00×"]  # speed-up over encoder@2
    paper_bars = [c for c in paper.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in paper_bars] == ["ViT-L/16", "ViT-H/14"]
    assert [p.get_height() for p in paper_bars[1]] == pytest.approx([119.6, 34.5, 29.3])
    assert paper.get_ylabel() == "pretraining hours"


def test_loss_curves_mean_and_band(figs):
    res, _, _ = figs
    fig = loss_figure(res.losses("mask_ratio"), load_all()["mask_ratio"], "tiny")
    ax = fig.axes[0]
    assert [l.get_label() for l in ax.get_lines()] == ["0.1 (n=2)", "0.3 (n=2)", "0.5 (n=2)", "0.75 (n=2)"]
    assert len(ax.collections) == 4  # a seed band per variant
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([0.995, 0.895, 0.795, 0.695, 0.595])
    assert ax.get_xlabel() == "epoch"


def test_all_figures_are_written_png_and_pdf(figs):
    res, tables, tmp = figs
    names = []
    for name, fig in all_figures(res, list(tables.values())):
        for path in save(fig, str(tmp / "out"), name):
            with open(path, "rb") as f:
                head = f.read(8)
            assert os.path.getsize(path) > 2000
            assert head.startswith(b"\x89PNG") if path.endswith(".png") else head.startswith(b"%PDF")
        names.append(name)
    assert names == ["table2", "figure5", "figure7", "figure9", "loss_wallclock", "loss_mask_ratio", "loss_epochs",
                     "loss_partial_finetune"]


# --------------------------------------------------------------------------- reconstructions

def fake_pretrained(fast_cfg, target):
    """A pretraining record and checkpoint of an untrained tiny model: loading and drawing are what
    is under test, not training."""
    from core.targets import build_target
    cfg = fast_cfg(f"model.target={target}")
    torch.manual_seed(0)
    model = MAE(cfg.model, build_target(cfg.model, cfg.data).dim)
    ckpt = os.path.join(cfg.run.work_dir, cfg.run_id())
    final = checkpoint.save(ckpt, 1, {"model": model.state_dict(), "config": cfg.to_dict()})
    results.write_record(cfg.run.results_dir, {"run_id": cfg.run_id(), "kind": "pretrain", "status": "done",
                                               "config": cfg.to_dict(), "checkpoint_dir": os.path.abspath(ckpt),
                                               "last_checkpoint": final, "last_checkpoint_sha256": checkpoint.sha256(final),
                                               "history": {"loss": [1.0]}})
    return cfg, model


@pytest.mark.parametrize("target", ["pixel", "norm_pixel"])
def test_reconstruction_figure(fast_cfg, target):
    from plots.reconstruction import load_pretrained, reconstruct, reconstruction_figure, validation_images
    cfg, _ = fake_pretrained(fast_cfg, target)
    fig, caption = reconstruction_figure(cfg.run.results_dir, cfg.run_id(), n_images=3)
    assert len(fig.axes) == 12 and len(fig.axes[0].images) == 1
    assert [ax.get_title() for ax in fig.axes[:4]] == ["original", "masked", "reconstruction",
                                                        "reconstruction + visible"]
    assert ("true mean and variance" in caption) == (target == "norm_pixel")
    # the pasted picture shows the original exactly where patches were visible
    cfg2, model, tgt, _ = load_pretrained(cfg.run.results_dir, cfg.run_id())
    imgs = validation_images(cfg2, 2)
    masked, recon, pasted, mask = reconstruct(cfg2, model, tgt, imgs)
    from plots.reconstruction import to_display
    p = model.patch_size
    vis = ~mask
    orig = patchify(to_display(imgs, cfg2), p)
    assert torch.allclose(patchify(pasted, p)[vis], orig[vis], atol=1e-5)
    assert torch.allclose(patchify(masked, p)[mask], torch.full_like(orig[mask], 0.5), atol=1e-5)
    assert not torch.allclose(patchify(pasted, p)[mask], orig[mask])


def test_reconstruction_skips_targets_without_pixels(fast_cfg):
    from plots.reconstruction import reconstruction_figure
    cfg, _ = fake_pretrained(fast_cfg, "hog")
    fig, caption = reconstruction_figure(cfg.run.results_dir, cfg.run_id())
    assert fig is None and "predicts no pixels" in caption


def test_reconstruction_of_a_missing_run_is_one_line(fast_cfg):
    from core.errors import UserError
    from plots.reconstruction import reconstruction_figure
    cfg = fast_cfg()
    with pytest.raises(UserError, match="no run record for pt-nothing"):
        reconstruction_figure(cfg.run.results_dir, "pt-nothing")


def test_mask_sampling_picture(fast_cfg):
    from plots.masks import mask_sampling_figure, panels
    cfg = fast_cfg()
    fig = mask_sampling_figure(cfg)
    # the paper's three, then any strategy a plugin registered
    assert [ax.get_title() for ax in fig.axes][:4] == ["original", "random 75%", "block 50%", "grid 75%"]
    assert len(fig.axes) == 1 + len(panels())
    # the grey share of each panel is the masking ratio (grey = 0.5 in display space)
    for ax, (_, ratio) in zip(fig.axes[1:], panels()):
        img = np.asarray(ax.images[0].get_array())
        grey = np.all(np.isclose(img, 0.5, atol=1e-6), axis=-1).mean()
        assert grey == pytest.approx(ratio, abs=0.03)


def test_report_holds_every_table_and_figure(figs, capsys):
    import run_all
    res, tables, tmp = figs
    overrides = [f"run.results_dir={res.results_dir}", f"run.work_dir={tmp / 'work'}"]
    assert run_all.main(["report", "--preset", "tiny", "--seeds", "2", *ABLATIONS, *overrides]) == 0
    path = os.path.join(res.results_dir, "report", "tiny", "report.md")
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {path}"
    text = open(path).read()
    for t in tables.values():
        assert f"### {t.title}" in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert {os.path.basename(l) for l in links} >= {"figure5.png", "figure9.png", "table2.png",
                                                    "loss_mask_ratio.png", "figure6_mask_sampling.png"}
    for link in links:  # relative links that resolve from the report's folder
        assert os.path.getsize(os.path.join(os.path.dirname(path), link)) > 2000
    assert os.path.exists(os.path.join(res.results_dir, "tables", "tiny", "figure5.csv"))
