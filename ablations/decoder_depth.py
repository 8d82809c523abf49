"""Table 1a: decoder depth. A deep decoder matters for linear probing, less for fine-tuning."""
from core.ablation import Ablation, ladder

ABLATION = Ablation(
    name="decoder_depth", source="table1a", title="Decoder depth",
    variants={str(d): {"model.decoder_depth": d} for d in (1, 2, 4, 8, 12)},
    baseline="8",
    # tiny's baseline decoder is 2 blocks (a 4-block encoder); its ladder spans the paper's first four rows
    small_variants=ladder("model.decoder_depth", [(1, "1"), (2, "2"), (4, "4"), (8, "8")]),
    small_baseline="2",
)
