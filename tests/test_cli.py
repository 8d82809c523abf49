"""The CLI: one line naming the problem, exit status 2, nothing written."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_all.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["pretrain", "--preset", "huge"], "unknown preset 'huge'"),
    (["pretrain", "model.mask_ration=0.5"], "did you mean model.mask_ratio"),
    (["pretrain", "pretrain.epochs=ten"], "pretrain.epochs must be int"),
    (["pretrain", "model.mask_ratio=1.5"], "model.mask_ratio must be in (0, 1)"),
    (["pretrain", "model.img_size=30"], "not a positive multiple of the patch size 4"),
    (["pretrain", "data.dataset=imagefolder", "data.path=/nonexistent/imagenet"], "does not exist"),
    (["pretrain", "data.dataset=imagefolder"], "data.path is required"),
    (["pretrain", "--bogus"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    out = run_cli(*args, f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


def test_dataset_path_that_is_a_file_or_empty(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    for path, needle in ((f, "is not a directory"), (tmp_path / "empty", "holds no images")):
        out = run_cli("pretrain", "data.dataset=imagefolder", f"data.path={path}",
                      f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work")
        assert out.returncode == 2 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_pretrain_prints_where_things_went(tmp_path):
    out = run_cli("pretrain", "--quiet", "data.dataset=synthetic", "data.synthetic_size=64", "pretrain.epochs=1",
                  "pretrain.warmup_epochs=0", "pretrain.batch_size=32", f"run.results_dir={tmp_path}/results",
                  f"run.work_dir={tmp_path}/work")
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path}/results/runs/pt-" in out.stdout and f"{tmp_path}/work/pt-" in out.stdout
