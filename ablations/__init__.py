"""One module per paper ablation, each declaring `ABLATION = Ablation(...)` (see core/ablation.py).
Found automatically: add a file here and `run_all.py list` shows it."""
