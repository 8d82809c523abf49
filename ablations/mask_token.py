"""Table 1c: mask tokens in the encoder versus in the decoder only (the asymmetric design)."""
from core.ablation import Ablation

ABLATION = Ablation(
    name="mask_token", source="table1c", title="Mask token",
    variants={"encoder": {"model.mask_token_in_encoder": True}, "decoder_only": {}},
    baseline="decoder_only",
    metrics=("ft_top1", "linprobe_top1", "flops_ratio"),  # FLOPs from each run's record
)
