"""Table 1f: mask sampling strategy (Figure 6): random, block-wise (BEiT) and regular grid."""
from core.ablation import Ablation

ABLATION = Ablation(
    name="mask_sampling", source="table1f", title="Mask sampling",
    variants={
        "random@0.75": {},
        "block@0.50": {"model.mask_strategy": "block", "model.mask_ratio": 0.5},
        "block@0.75": {"model.mask_strategy": "block", "model.mask_ratio": 0.75},
        "grid@0.75": {"model.mask_strategy": "grid", "model.mask_ratio": 0.75},
    },
    baseline="random@0.75",
)
