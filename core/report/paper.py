"""The paper's numbers: results/paper/paper_reference.csv, one value a row."""
from __future__ import annotations

import os
import re

from core.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CSV = os.path.join(ROOT, "results", "paper", "paper_reference.csv")
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
