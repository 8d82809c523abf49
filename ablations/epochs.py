"""Figure 7: training schedule. Accuracy keeps improving with longer pretraining."""
from core.ablation import Ablation, ladder

ABLATION = Ablation(
    name="epochs", source="figure7", title="Pretraining epochs", display="curve", x_label="epochs",
    variants={str(e): {"pretrain.epochs": e} for e in (100, 200, 400, 800, 1600)},
    baseline="800",
    # small presets: the same proportions around the tiny baseline of 15 epochs (warm-up stays 2)
    small_variants=ladder("pretrain.epochs", [(2, "100"), (4, "200"), (8, "400"), (15, "800"), (30, "1600")]),
    small_baseline="15",
)
