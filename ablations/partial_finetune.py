"""Figure 9: partial fine-tuning. Tuning a few of the last blocks recovers most of full fine-tuning.
The variants change only the evaluation, so they share one pretraining run."""
from core.ablation import Ablation, ladder

ABLATION = Ablation(
    name="partial_finetune", source="figure9", title="Partial fine-tuning", display="curve",
    x_label="# blocks fine-tuned",
    variants={str(k): {"eval.finetune.blocks": k} for k in (0, 1, 2, 4, 6, 12, 18, 24)},
    baseline="0",
    evals=("partial",), metrics=("ft_top1",),
    # tiny's encoder has 4 blocks: 0 (linear probe with the head's norm), 1, 2, 4 (= full fine-tuning)
    small_variants=ladder("eval.finetune.blocks", [(0, "0"), (1, "1"), (2, "2"), (4, "24")]),
    small_baseline="0",
    small_evals=("partial",),
)
