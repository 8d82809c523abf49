"""Table 1d: reconstruction target. HOG is not in the paper (MaskFeat's target), shown for comparison."""
from core.ablation import Ablation

TARGETS = ("pixel", "norm_pixel", "pca", "dvae_token")

ABLATION = Ablation(
    name="target", source="table1d", title="Reconstruction target",
    variants={**{t: {"model.target": t} for t in TARGETS}, "hog": {"model.target": "hog"}},
    baseline="pixel",
    small_variants={**{t: (t, {"model.target": t}) for t in TARGETS}, "hog": (None, {"model.target": "hog"})},
    small_baseline="pixel",
    notes="hog: not in the paper",
)
