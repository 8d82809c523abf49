"""Table 2: wall-clock time of pretraining. Mask tokens in the encoder cost ~3x; a 1-block decoder
is faster still. Times come from each run's record and from bench/wallclock.py at the paper's sizes."""
from core.ablation import Ablation

ABLATION = Ablation(
    name="wallclock", source="table2", title="Wall-clock pretraining time",
    variants={
        "encoder@8": {"model.mask_token_in_encoder": True},
        "decoder_only@8": {},
        "decoder_only@1": {"model.decoder_depth": 1},
    },
    baseline="decoder_only@8",
    metrics=("ft_top1", "hours", "speedup"),
    # tiny: encoder with mask tokens vs decoder-only at tiny's 2-block decoder, and a 1-block decoder
    small_variants={
        "encoder@2": ("encoder@8", {"model.mask_token_in_encoder": True}),
        "decoder_only@2": ("decoder_only@8", {}),
        "decoder_only@1": ("decoder_only@1", {"model.decoder_depth": 1}),
    },
    small_baseline="decoder_only@2",
)
