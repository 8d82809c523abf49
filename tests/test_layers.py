"""The import graph of the suite: no cycles, no import from a lower layer to a higher one, and no
function-local import of a project module (issue 14, "One layered core").

Reads the source with `ast` only (nothing is imported), so it is fast and checks any checkout:
MAE_LAYERS_ROOT=/path/to/checkout pytest tests/test_layers.py
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(os.environ.get("MAE_LAYERS_ROOT") or Path(__file__).resolve().parents[1])
PROJECT = ("core", "plots", "ablations", "run_all")

# Lowest first. A module may import modules of its own layer or below, never above. Data flows one
# way: config is pure data; model, data and targets are built from it; the run store holds the
# records that training, evaluation and the tokenizer write and that sweeps and reports read;
# orchestration runs units; the report reads records; plots draw the report's tables; the CLI is
# on top. The most specific prefix wins; every module must have one.
LAYERS = [
    # import nothing of the suite but errors, settings and the registry (which imports the built-in
    # components' modules by name the first time it is asked what it holds: core/registry.py)
    ("foundation", ["core.errors", "core.settings", "core.registry", "core.archs", "core.mask_rules",
                    "core.cluster.checks", "core.presets"]),
    ("utilities", ["core.checkpoint", "core.progress", "core.device", "core.distributed", "core.runlock", "core.loop"]),
    ("config", ["core.config"]),
    ("plan definitions", ["core.ablation", "ablations"]),
    ("run store", ["core.results"]),
    ("model, data, targets", ["core.model", "core.masking", "core.flops", "core.data", "core.scenes", "core.ffcv",
                              "core.fingerprint", "core.targets", "core.dataprep"]),
    ("train and eval", ["core.train", "core.eval", "core.prepared"]),  # prepared: builds a PCA basis or tokenizer
    ("orchestration", ["core.sweep", "core.parallel", "core.rehearsal", "core.cluster"]),
    ("report", ["core.report"]),
    ("plots", ["plots"]),
    ("cli", ["run_all", "core"]),  # `core` itself only (the package's empty __init__), not core.*
]

# Optional heavy dependencies, imported where they are used: each import needs a comment saying why.
LAZY_OK = ("ffcv", "submitit", "pandas", "matplotlib", "numba", "sklearn", "scipy", "torch.utils.tensorboard")
# The command line imports the suite's modules inside each subcommand: `--help`, `config` and a
# one-line error answer in a fraction of a second instead of the seconds torch, timm and matplotlib
# take to import. It is the top layer, so this can hide no cycle.
LAZY_PROJECT_OK = ("run_all",)


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for top in PROJECT:
        if (root / f"{top}.py").is_file():
            out[top] = root / f"{top}.py"
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else ():
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


class Import:
    def __init__(self, name: str, line: int, local: bool, has_reason: bool):
        self.name, self.line, self.local, self.has_reason = name, line, local, has_reason


def imports(name: str, path: Path, known) -> list[Import]:
    """Every import of `path` as the module it names (`from core import results` -> core.results)."""
    source = path.read_text()
    lines = source.splitlines()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def reason(run) -> bool:  # a comment in a run of imports or on the line above it
        return any("#" in ln for ln in lines[max(run[0].lineno - 2, 0):run[-1].end_lineno])

    def add(node, local, why):
        if isinstance(node, ast.Import):
            out.extend(Import(a.name, node.lineno, local, why) for a in node.names)
            return
        base = node.module or ""
        if node.level:  # relative: from . import x, from .x import y
            up = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(up + ([base] if base else []))
        for a in node.names:
            full = f"{base}.{a.name}"
            out.append(Import(full if full in known else base, node.lineno, local, why))

    def visit(node, local):
        for _, value in ast.iter_fields(node):
            stmts = value if isinstance(value, list) else [value]
            run = []
            for child in stmts + [None]:
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    run.append(child)
                    continue
                for imp in run:
                    add(imp, local, reason(run))
                run = []
                if isinstance(child, ast.AST):
                    visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, str(path)), False)
    return out


def is_project(name: str) -> bool:
    return name.split(".")[0] in PROJECT


def layer_of(name: str) -> int:
    best, layer = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".") and p != "core") and len(p) > best:
                best, layer = len(p), i
    if layer is None:
        raise AssertionError(f"{name} is in no layer of tests/test_layers.py: add it to LAYERS")
    return layer


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, list[Import]]]:
    mods = modules(root)
    found = {m: imports(m, p, mods) for m, p in mods.items()}
    # An import of a package's submodule runs the package's __init__ first; the graph has the edge to
    # the submodule only (as import linters do), so `core.targets` may register its own submodules.
    edges = {m: {i.name for i in imps if i.name in mods and i.name != m} for m, imps in found.items()}
    return edges, found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a in sorted(edges) for b in sorted(edges[a]) if layer_of(b) > layer_of(a)]


def bad_local(found) -> list[str]:
    out = []  # one line per import statement and module it names
    for m, imps in sorted(found.items()):
        for i in imps:
            if not i.local:
                continue
            if is_project(i.name):
                if m in LAZY_PROJECT_OK:
                    continue
                out.append(f"{m}:{i.line} imports {i.name} inside a function")
            elif not any(i.name == p or i.name.startswith(p + ".") for p in LAZY_OK):
                out.append(f"{m}:{i.line} imports {i.name} inside a function (not an optional heavy dependency)")
            elif not i.has_reason:
                out.append(f"{m}:{i.line} imports {i.name} inside a function without a comment saying why")
    return list(dict.fromkeys(out))


def test_no_import_cycles():
    edges, _ = graph()
    assert not cycles(edges), "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles(edges))


def test_no_import_from_a_lower_layer_to_a_higher_one():
    edges, _ = graph()
    assert not upward(edges), "\n".join(upward(edges))


def test_no_function_local_imports_of_the_suite():
    _, found = graph()
    assert not bad_local(found), "\n".join(bad_local(found))


def test_config_imports_nothing_that_needs_torch():
    """config is a leaf: what it imports (transitively) is torch-free and below it."""
    edges, found = graph()
    seen, todo = set(), ["core.config"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(edges[m])
    heavy = [f"{m} imports {i.name}" for m in sorted(seen) for i in found[m]
             if i.name.split(".")[0] in ("torch", "torchvision", "timm", "numpy")]
    assert not heavy, "\n".join(heavy)
    assert all(layer_of(m) <= layer_of("core.config") for m in seen)


# The checker itself, on a made-up tree: each rule fails where it should.
def test_the_checker_finds_each_kind_of_problem(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "config.py").write_text("from core import model\n")  # up, and a cycle
    (tmp_path / "core" / "model.py").write_text(
        "import core.config\n\ndef f():\n    from core.errors import UserError\n    import json\n\n"
        "    import pandas  # optional: only the report needs it\n    return pandas\n\n\ndef g():\n"
        "    import submitit\n")
    edges, found = graph(tmp_path)
    assert cycles(edges) == [["core.config", "core.model"]]
    assert upward(edges) == ["core.config (config) imports core.model (model, data, targets)"]
    assert bad_local(found) == ["core.model:4 imports core.errors inside a function",
                                "core.model:5 imports json inside a function (not an optional heavy dependency)",
                                "core.model:12 imports submitit inside a function without a comment saying why"]


def test_every_module_has_a_layer():
    assert "core.config" in modules() and "run_all" in modules()
    for m in modules():
        layer_of(m)  # raises naming a module added without a layer
