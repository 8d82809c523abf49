"""Table 1b: decoder width."""
from core.ablation import Ablation, ladder

ABLATION = Ablation(
    name="decoder_width", source="table1b", title="Decoder width",
    variants={str(w): {"model.decoder_embed_dim": w} for w in (128, 256, 512, 768, 1024)},
    baseline="512",
    # the paper's widths divided by 8 around tiny's 64-wide decoder (4 heads)
    small_variants=ladder("model.decoder_embed_dim", [(16, "128"), (32, "256"), (64, "512"), (96, "768"),
                                                      (128, "1024")]),
    small_baseline="64",
)
