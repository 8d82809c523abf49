"""One Markdown report per preset with every table and figure, regenerated from the run records:
<results_dir>/report/<preset>/report.md, its figures beside it in figures/ (the folder can be moved
or committed as a whole)."""
from __future__ import annotations

import os
import time

from core.report.claims import claims_markdown, evaluate_claims
from core.report.collect import Results
from core.report.render import _write, markdown, write_tables


def report_dir(results_dir: str, preset: str) -> str:
    return os.path.join(results_dir, "report", preset)


def run_counts(res: Results) -> dict:
    """Distinct runs of this sweep by state (a shared baseline run counts once)."""
    v = res.values.dropna(subset=["run_id"]).drop_duplicates("run_id")
    return v.state.value_counts().to_dict()


def write_report(res: Results, tables, figures: list[dict], out_dir: str, tables_dir: str) -> str:
    write_tables(tables, tables_dir)
    path = os.path.join(out_dir, "report.md")
    rel = lambda p: os.path.relpath(p, out_dir)  # noqa: E731  links that survive moving the folder
    by_name = {f["name"]: f for f in figures}
    counts = run_counts(res)
    lines = [f"# MAE ablations at preset `{res.preset}`", "",
             f"Regenerated {time.strftime('%Y-%m-%d %H:%M')} from the run records in `{res.results_dir}/runs` "
             f"by `python run_all.py report --preset {res.preset}`. Runs of this sweep: "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
             "", f"Tables as Markdown, LaTeX and CSV: `{tables_dir}`. How to read them: `docs/reading_results.md`.",
             "", "## The paper's claims at this scale", "", claims_section(res, tables_dir), "## Tables and curves", ""]
    for t in tables:
        lines.append(markdown(t, level=3))
        fig = by_name.get(t.id)
        if fig and fig["paths"]:
            lines += _figure(fig, rel)
    lines += ["## Pretraining loss", ""]
    for f in figures:
        if f["name"].startswith("loss_"):
            lines += _figure(f, rel)
    lines += ["## Reconstructions (paper Figures 2-3)", ""]
    for f in figures:
        if f["name"].startswith("reconstruction_"):
            lines += _figure(f, rel) if f["paths"] else [f"- {f['caption']}", ""]
    if not any(f["name"].startswith("reconstruction_") for f in figures):
        lines += ["No finished pretraining run with a checkpoint yet.", ""]
    lines += ["## Mask sampling (paper Figure 6)", ""]
    f = by_name.get("figure6_mask_sampling")
    if f:
        lines += _figure(f, rel) if f["paths"] else [f"- {f['caption']}", ""]
    return _write(path, "\n".join(lines) + "\n")


def claims_section(res: Results, tables_dir: str) -> str:
    """The claims table (also written as claims.md / claims.csv beside the tables)."""
    df = evaluate_claims(res)
    text = claims_markdown(df, res.preset)
    _write(os.path.join(tables_dir, "claims.md"), text)
    _write(os.path.join(tables_dir, "claims.csv"), df.drop(columns=["verdicts"]).to_csv(index=False))
    return text


def _figure(f: dict, rel) -> list[str]:
    png = next((p for p in f["paths"] if p.endswith(".png")), None)
    pdf = next((p for p in f["paths"] if p.endswith(".pdf")), None)
    return [f"![{f['name']}]({rel(png)})", "", f"*{f['caption']}* ([PDF]({rel(pdf)}))", ""]
