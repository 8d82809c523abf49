"""Figures from run records: the paper's curves next to ours (figures.py), reconstructions like
the paper's Figures 2-3 (reconstruction.py) and the mask-sampling picture of Figure 6 (masks.py),
in one colour-blind-safe style (style.py). Files go to plots/out/<preset>/ unless told otherwise."""
