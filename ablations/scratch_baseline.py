"""Section 4: a ViT trained from scratch with the supervised recipe (Appendix A.2), the baseline
MAE fine-tuning is compared against (paper: 82.5 ours vs 76.5 original ViT-L, MAE 84.9)."""
from core.ablation import Ablation

ABLATION = Ablation(
    name="scratch_baseline", source="section4", title="Supervised ViT from scratch",
    variants={"our_impl": {}}, baseline="our_impl",
    pretrain=False, evals=("scratch",), small_evals=("scratch",), metrics=("ft_top1",),
)
