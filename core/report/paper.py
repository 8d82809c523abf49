"""The paper's numbers: results/paper/paper_reference.csv, one value a row."""
from __future__ import annotations

import os
import re

from core.ablation import load_all
from core.errors import UserError
from core.presets import TIER_OF, TIERS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CSV = os.path.join(ROOT, "results", "paper", "paper_reference.csv")
# Published numbers at the scale of each tier below the paper (docs/tiers.md): tier, ablation, variant,
# metric, value, source; copied from results/paper/small_scale_reference.csv
TIER_CSV = os.path.join(ROOT, "results", "paper", "tier_reference.csv")
NO_FIGURE = "no published figure"
# The model every ablation row of the paper uses; small presets stand in for it.
PAPER_MODEL = "vit_large_patch16"
MODEL_NAMES = {"vit_base_patch16": "ViT-B/16", "vit_large_patch16": "ViT-L/16", "vit_huge_patch14": "ViT-H/14",
               "vit_huge_patch14_448": "ViT-H/14 (448 px)", "vit_small_patch16": "ViT-S/16",
               "vit_tiny_patch4": "ViT-tiny/4"}


def load_paper(path: str = PAPER_CSV):
    """The reference as a DataFrame with a `key` naming each row uniquely (source/ablation/model/
    variant/metric), so a test can check that every row is shown exactly once."""
    import pandas as pd  # heavy (~1 s to import here): only tables need it

    try:
        df = pd.read_csv(path, dtype={"variant": str, "model": str, "source": str, "ablation": str})
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the paper reference {path}: {e}") from None
    df["is_default"] = df["is_default"].astype(str).str.lower() == "true"
    df["key"] = df["source"] + "/" + df["ablation"] + "/" + df["model"] + "/" + df["variant"] + "/" + df["metric"]
    dup = df["key"][df["key"].duplicated()]
    if len(dup):
        raise UserError(f"{path} holds row {dup.iloc[0]} twice")
    return df


def model_name(arch: str) -> str:
    return MODEL_NAMES.get(arch, arch)


def source_name(source: str) -> str:
    """table1c -> Table 1c, figure5 -> Figure 5, section4 -> Section 4; anything else as is."""
    m = re.fullmatch(r"(table|figure|section)(\d+)([a-z]?)", source)
    return f"{m.group(1).capitalize()} {m.group(2)}{m.group(3)}" if m else source


def tier_of(preset: str) -> str | None:
    """The tier below the paper a preset is (or rehearses); None for the paper and small presets."""
    tier = TIER_OF.get(preset, preset)
    return tier if tier in TIERS[1:] else None


def load_reference(preset: str, path: str = TIER_CSV):
    """The reference a preset's tables and claims join: the paper's rows, or at a tier the same rows
    (every paper row still appears once) holding that tier's published numbers and NaN elsewhere, with
    the source of each number in a `published` column. The paper's ViT-L values never stand in."""
    import pandas as pd  # heavy: only tables need it

    paper = load_paper()
    tier = tier_of(preset)
    if tier is None:
        return paper
    try:
        pub = pd.read_csv(path, dtype={"variant": str})
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the tier reference {path}: {e}") from None
    # the ablations' rows (and their reference series) lose the ViT-L values; the system-level
    # reference table (Tables 3 and 12, named by model) keeps its own
    ablation_rows = paper.source.isin({a.source for a in load_all().values()})
    paper.loc[ablation_rows, "value"] = float("nan")
    paper["published"] = ""
    for r in pub[pub.tier == tier].itertuples():
        hit = (paper.ablation == r.ablation) & (paper.variant == r.variant) & (paper.metric == r.metric) \
            & (paper.model == PAPER_MODEL)
        if not hit.any():
            raise UserError(f"{path}: {tier} {r.ablation}/{r.variant} {r.metric} is no row of the paper's")
        paper.loc[hit, "value"], paper.loc[hit, "published"] = float(r.value), r.source
    paper.attrs["tier"] = tier
    return paper
