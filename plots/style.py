"""One look for every figure: the Okabe-Ito colour-blind-safe palette, the Agg backend (no display
needed), PNG and PDF side by side."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only: works on a cluster node and in tests without a display
import matplotlib.pyplot as plt  # noqa: E402
from cycler import cycler  # noqa: E402

from core.errors import UserError  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": distinguishable with any common colour deficiency.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
PAPER_COLOUR = "#555555"  # the paper's numbers: grey, so ours stand out
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
RC = {
    "axes.prop_cycle": cycler(color=OKABE_ITO),
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "legend.frameon": False,
    "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight", "pdf.fonttype": 42,
}
FORMATS = ("png", "pdf")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2, **kw):
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    for ax in axes.flat:  # rc_context is left by now: apply the style to the axes themselves
        ax.set_prop_cycle(RC["axes.prop_cycle"])
        ax.grid(True, alpha=RC["grid.alpha"])
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def save(fig, out_dir: str, name: str) -> list[str]:
    """<out_dir>/<name>.png and .pdf; the figure is closed afterwards."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        with plt.rc_context(RC):
            for ext in FORMATS:
                path = os.path.join(out_dir, f"{name}.{ext}")
                fig.savefig(path)
                paths.append(path)
    except OSError as e:
        raise UserError(f"cannot write figure {name} to {out_dir}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return paths
