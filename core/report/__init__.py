"""From run records to what a reader sees: the paper's tables joined with ours, comparisons, a report.

    collect.py  records -> one value per (ablation, variant, seed, metric) -> mean, std, n
    paper.py    the paper's numbers (results/paper/paper_reference.csv)
    tables.py   ours joined with the paper's, table by table
    render.py   Markdown, LaTeX (booktabs) and CSV files
    compare.py  a new ablation against a baseline: deltas, seed spread, Welch's t-test and interval
    intervals.py  t intervals that stay honest at three seeds (compare, claims, error bars)
    claims.py   the paper's qualitative claims, each with a verdict at this preset
    report.py   one Markdown report with every table and figure
"""
