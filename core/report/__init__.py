"""From run records to what a reader sees: the paper's tables joined with ours, comparisons, a report.

    collect.py  records -> one value per (ablation, variant, seed, metric) -> mean, std, n
    paper.py    the paper's numbers (results/paper/paper_reference.csv)
    tables.py   ours joined with the paper's, table by table
    render.py   Markdown, LaTeX (booktabs) and CSV files
    compare.py  a new ablation against a baseline: deltas, seed spread, Welch's t-test, bootstrap CI
    report.py   one Markdown report with every table and figure
"""
