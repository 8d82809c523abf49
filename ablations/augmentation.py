"""Table 1e: data augmentation. MAE works with cropping only; colour jitter hurts."""
from core.ablation import Ablation

ABLATION = Ablation(
    name="augmentation", source="table1e", title="Data augmentation",
    variants={a: {"data.augmentation": a} for a in ("none", "crop_fixed", "crop_rand", "crop_color_jitter")},
    baseline="crop_rand",
)
