"""docs/extending.md, executed: its code blocks become a plugin package in a folder outside the checkout,
registered through MAE_PLUGINS; its commands run a tiny sweep, `compare` and `tables` on them (issue 25's
"Done when": a strategy and a target with a parameter, neither editing core/)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "extending.md")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", open(DOC).read(), re.S)


def write_plugins(folder) -> list[str]:
    """Every python block whose first line is `# <path>` becomes that file under `folder`."""
    written = []
    for code in blocks("python"):
        first = code.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            path = folder / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code)
            written.append(first[2:].strip())
    return written


def commands() -> list[list[str]]:
    """The doc's `python run_all.py ...` lines, comments cut."""
    out = []
    for code in blocks("bash"):
        for line in code.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python run_all.py"):
                out.append(line.split()[2:])
    return out


def cli(args, env):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_all.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_worked_example_runs_from_a_folder_outside_the_checkout(tmp_path):
    plugins = tmp_path / "mae_plugins"
    assert sorted(write_plugins(plugins)) == ["my_mae/__init__.py", "my_mae/center.py", "my_mae/lowpass.py",
                                              "my_mae/my_ideas.py"]
    assert not str(plugins).startswith(ROOT)
    env = {**os.environ, "MAE_PLUGINS": str(plugins), "PYTHONPATH": ROOT}
    dirs = [f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]  # not in run ids
    cmds = commands()
    assert [c[0] for c in cmds] == ["list", "config", "run", "status", "compare", "tables"]
    outs = {}
    for c in cmds:
        r = cli(c + ([] if c[0] == "list" else dirs), env)
        assert r.returncode == 0, (c, r.stdout[-2000:], r.stderr[-2000:])
        outs[c[0]] = r.stdout
    assert re.search(r"my_ideas\s+extra", outs["list"]) and "center " in outs["list"] and "lowpass " in outs["list"]
    assert "model.lowpass_sigma=1.0" in outs["list"]
    line = next(ln for ln in outs["config"].splitlines() if ln.startswith("model.lowpass_sigma"))
    assert "= 2.0" in line and "lowpass target: Gaussian blur sigma in pixels" in line and "(0, 4]" in line
    assert "12 of 12 runs done" in outs["run"]
    assert re.search(r"my_ideas\s+12\s", outs["status"])  # found without repeating the ablation's overrides
    assert "my_ideas/center" in outs["compare"] and "linprobe" in outs["compare"].lower()
    table = (tmp_path / "results" / "tables" / "tiny" / "extra.md").read_text()
    assert all(v in table for v in ("baseline", "center", "lowpass", "lowpass_s2"))
    # the plugin's strategy and target are registered components: a bad value is one line from its declaration
    r = cli(["config", "--preset", "tiny", "model.target=lowpass", "model.lowpass_sigma=9"], env)
    assert r.returncode == 2 and r.stderr == "error: model.lowpass_sigma must be in (0, 4], got 9.0\n"
    # without the plugins the names are unknown, and the message says how components load
    r = cli(["config", "--preset", "tiny", "model.mask_strategy=center"], {**env, "MAE_PLUGINS": ""})
    assert r.returncode == 2 and "is not one of: random, block, grid" in r.stderr and "MAE_PLUGINS" in r.stderr
    # a compare that finds no runs (other overrides) says what the ids depend on
    r = cli(["compare", "my_ideas/center", "--baseline", "my_ideas", "--preset", "tiny", "pretrain.epochs=2", *dirs], env)
    assert r.returncode == 2 and "ablation my_ideas's own overrides (pretrain.epochs=1" in r.stderr


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\n\nraise RuntimeError('my bug')\n")
    r = cli(["list"], {**os.environ, "PYTHONPATH": ROOT, "MAE_PLUGINS": str(tmp_path / "broken.py")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "plugin broken" in r.stderr and "RuntimeError: my bug" in r.stderr and "broken.py:3" in r.stderr


@pytest.mark.parametrize("entry, message", [("/no/such/folder", "no such folder"), ("no_such_module_xyz", "no folder")])
def test_a_missing_plugin_is_one_line(entry, message):
    r = cli(["list"], {**os.environ, "PYTHONPATH": ROOT, "MAE_PLUGINS": entry})
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1
