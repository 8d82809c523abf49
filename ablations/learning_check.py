"""Does pretraining learn? Not a paper ablation: the baseline MAE's linear probe and kNN next to
the same evaluations of raw pixels (no model) and of the encoder that pretraining starts from,
never trained (same architecture, same seed: the same initial weights). An MAE that does not beat
both measures what its encoder keeps of the pixels, not what it learned (docs/evaluation.md).

The paper preset runs the random-weight linear probe only (one ViT-L probe per seed, like the
baseline's): a pixel probe at 224 px has 150,528 features per image, 770 GB of them for ImageNet's
train split, and says nothing about ImageNet that the paper does not already know."""
from core.ablation import Ablation

ABLATION = Ablation(
    name="learning_check", source="testbed", title="Does pretraining learn? MAE vs raw pixels and random weights",
    variants={"mae": {}, "random": {}}, baseline="mae",
    sources={"pixels": "pixels", "random": "random"},
    evals=("linprobe",), metrics=("linprobe_top1",),
    small_variants={"pixels": (None, {}), "random": (None, {}), "mae": (None, {})}, small_baseline="mae",
    notes="pixels: a linear probe / kNN on the normalised, flattened image; random: the encoder pretraining run "
          "pretrain.seed starts from, never trained; mae: the baseline pretraining run of every ablation",
)
