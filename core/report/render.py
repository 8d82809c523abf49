"""Tables as files: Markdown, LaTeX (booktabs) and CSV (long form, one number a row)."""
from __future__ import annotations

import os

from core.checkpoint import write_text
from core.errors import UserError


def markdown(t, level: int = 3) -> str:
    align = ["---" if i < 2 else "---:" for i in range(len(t.header))]
    lines = [f"{'#' * level} {t.title}", "", _md_row(t.header), _md_row(align)]
    lines += [_md_row(r) for r in t.body]
    lines += [""] + [f"- {n}" for n in t.legend + t.notes]
    return "\n".join(lines) + "\n"


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


LATEX_SUBS = [("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"),
              ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}")]
LATEX_SYMBOLS = [("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("—", "---"), ("−", "$-$"), ("†", r"$^\dagger$"),
                 ("*", r"$^*$"), ("×", r"$\times$")]


def tex_escape(text) -> str:
    text = str(text).replace("\\", "\0")  # backslashes last: their escape holds braces
    for a, b in LATEX_SUBS:
        text = text.replace(a, b)
    text = text.replace("\0", r"\textbackslash{}")
    for a, b in LATEX_SYMBOLS:
        text = text.replace(a, b)
    return text


def latex(t) -> str:
    cols = "ll" + "r" * (len(t.header) - 2) if len(t.header) > 2 else "l" * len(t.header)
    lines = [f"% {t.title}. Needs \\usepackage{{booktabs}}.", f"\\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(tex_escape(h) for h in t.header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in t.body]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {n}" for n in t.legend + t.notes]
    return "\n".join(lines) + "\n"


def write_tables(tables, out_dir: str) -> list[str]:
    """<out_dir>/<table id>.{md,tex,csv} for every table, and all.csv with every table's rows."""
    import pandas as pd  # heavy (~1 s to import here): only tables need it

    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out_dir}: {e.strerror or e}") from None
    paths = []
    for t in tables:
        for ext, text in (("md", markdown(t)), ("tex", latex(t)), ("csv", t.frame.to_csv(index=False))):
            paths.append(_write(os.path.join(out_dir, f"{t.id}.{ext}"), text))
    joined = pd.concat([t.frame for t in tables if "paper_key" in t.frame], ignore_index=True)
    paths.append(_write(os.path.join(out_dir, "all.csv"), joined.to_csv(index=False)))
    return paths


def _write(path: str, text: str) -> str:
    try:
        write_text(path, text)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path
