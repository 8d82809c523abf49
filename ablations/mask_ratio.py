"""Figure 5: masking ratio. High ratios (75%) work well for both fine-tuning and linear probing."""
from core.ablation import Ablation, ladder

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)

ABLATION = Ablation(
    name="mask_ratio", source="figure5", title="Masking ratio", display="curve", x_label="masking ratio",
    variants={str(r): {"model.mask_ratio": r} for r in RATIOS},
    baseline="0.75",
    # small presets: every other ratio (a 64-patch grid cannot tell 0.7 from 0.75 apart much)
    small_variants=ladder("model.mask_ratio", [(r, str(r)) for r in (0.1, 0.3, 0.5, 0.75, 0.9)]),
    small_baseline="0.75",
)
