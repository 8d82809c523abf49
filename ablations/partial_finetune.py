"""Figure 9: partial fine-tuning. Tuning a few of the last blocks recovers most of full fine-tuning.
The variants change only the evaluation, so they share one pretraining run.

As in the paper, each block count is fine-tuned for 50, 100 and 200 epochs (fewer blocks need
longer schedules) and the best is reported; "0 blocks" is the linear probe of the same run (73.5)."""
from core.ablation import Ablation, ladder

ABLATION = Ablation(
    name="partial_finetune", source="figure9", title="Partial fine-tuning", display="curve",
    x_label="# blocks fine-tuned (0: linear probe; best of the epoch ladder)",
    variants={str(k): {"eval.finetune.blocks": k} for k in (0, 1, 2, 4, 6, 12, 18, 24)},
    baseline="0",
    evals=("partial",), metrics=("ft_top1",),
    substitute={"0": {"partial": "linprobe"}},
    eval_ladder={"partial": ("eval.finetune.epochs", (50, 100, 200))},
    # tiny's encoder has 4 blocks: 0 (linear probe), 1, 2, 4 (= full fine-tuning). Its ladder keeps the
    # paper's 1:2:4 (about) and ends at tiny's 15-epoch fine-tune: scaled up to 15, 30, 60 epochs it
    # would add 255 fine-tune epochs to `make demo` (about 14 minutes), this adds 21
    small_variants=ladder("eval.finetune.blocks", [(0, "0"), (1, "1"), (2, "2"), (4, "24")]),
    small_baseline="0",
    small_evals=("partial",),
    small_eval_ladder={"partial": ("eval.finetune.epochs", (4, 8, 15))},
    notes="0 blocks: the linear probe of the same pretraining run, as in the paper; every other count: the "
          "best top-1 over the epoch ladder (all of them are listed)",
)
