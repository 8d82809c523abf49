"""Every third-party module the code imports is pinned in requirements.txt (issue 27): an unpinned one
arrives through another package at whatever version the resolver picks, so two installs could train
different code. Reads the source with `ast` only; nothing is imported or installed."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ["run_all.py", "core", "plots", "ablations", "bench", "tests"]

# Import names that are not their distribution's name.
DISTRIBUTIONS = {"PIL": "Pillow", "sklearn": "scikit-learn", "yaml": "PyYAML", "cv2": "opencv-python-headless"}

# The optional FFCV loader's stack (core/ffcv, docs/ffcv.md): scripts/install_ffcv.sh installs it
# from requirements-ffcv.txt, which pins it, and ffcv itself as ffcv==$FFCV_VERSION with --no-deps.
OPTIONAL_PINS = ROOT / "requirements-ffcv.txt"
NOT_IN_REQUIREMENTS = {"ffcv": "pinned by scripts/install_ffcv.sh (FFCV_VERSION), installed with --no-deps"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def pinned(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            out[normalized(name)] = version.strip() if sep else ""
    return out


def third_party_imports(root: Path = ROOT) -> dict[str, list[str]]:
    """Top-level module name -> the files importing it, for every module that is neither the standard
    library nor the suite's own (a package at the root, or any of its files' names: bench/ and tests/
    import their helpers by name)."""
    files = [p for d in CODE for p in ([root / d] if d.endswith(".py") else sorted((root / d).rglob("*.py")))
             if p.is_file()]
    own = {p.name for p in root.iterdir() if p.is_dir()} | {p.stem for p in files}
    out: dict[str, list[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top not in sys.stdlib_module_names and top not in own:
                    out.setdefault(top, []).append(str(path.relative_to(root)))
    return out


def unpinned(imports: dict[str, list[str]], pins: dict[str, str]) -> list[str]:
    return sorted(f"{module} ({DISTRIBUTIONS.get(module, module)}; imported by {', '.join(sorted(set(files))[:3])})"
                  for module, files in imports.items()
                  if module not in NOT_IN_REQUIREMENTS and not pins.get(normalized(DISTRIBUTIONS.get(module, module))))


def test_every_imported_third_party_module_is_pinned():
    pins = {**pinned(OPTIONAL_PINS), **pinned(ROOT / "requirements.txt")}
    imports = third_party_imports()
    assert {"torch", "numpy", "PIL"} <= imports.keys()  # the scan sees the suite's imports
    missing = unpinned(imports, pins)
    assert not missing, ("imported but not pinned as name==version in requirements.txt (the FFCV stack: "
                         "requirements-ffcv.txt): " + "; ".join(missing))


def test_the_check_finds_an_unpinned_module(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "a.py").write_text("import os\nfrom PIL import Image\nimport yaml.loader\n"
                                            "from core import b\n")
    (tmp_path / "core" / "b.py").write_text("")
    imports = third_party_imports(tmp_path)
    assert sorted(imports) == ["PIL", "yaml"]
    assert [u.split()[0] for u in unpinned(imports, {"pillow": "13.0.0"})] == ["yaml"]
    assert [u.split()[0] for u in unpinned(imports, {"pillow": "", "pyyaml": "6.0"})] == ["PIL"]  # no version
