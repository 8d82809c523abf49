"""The CLI on bad input: one line naming the problem, exit status 2, no record or checkpoint changed.

The table runs run_all.main() in-process (the same code path as the script, 0.1 s a case instead of
3 s of imports); test_exit_status_of_the_script checks the real process exit status and stderr.
"""
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_all
from plots.style import DEFAULT_OUT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_all.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A results folder holding a finished run (record + checkpoint), and the files bad input points at."""
    monkeypatch.chdir(tmp_path)
    runs, work = tmp_path / "results" / "runs", tmp_path / "work" / "pt-000000000001"
    runs.mkdir(parents=True)
    work.mkdir(parents=True)
    (runs / "pt-000000000001.json").write_text(json.dumps({"run_id": "pt-000000000001", "status": "done"}))
    torch.save({"model": {"w": torch.ones(3)}, "global_step": 8}, work / "ckpt-000000000008.pt")
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(384, 3, 16, 16)}}, tmp_path / "vit_small.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    # finished pretraining runs whose final checkpoint was replaced / removed (an older one exists)
    from core.config import build_config
    final = str(work / "ckpt-000000000008.pt")
    for rid, path in (("pt-00000000000f", final), ("pt-00000000000e", final.replace("08.pt", "09.pt"))):
        (runs / f"{rid}.json").write_text(json.dumps(
            {"run_id": rid, "kind": "pretrain", "status": "done", "config": build_config("tiny").to_dict(),
             "last_checkpoint": path, "last_checkpoint_sha256": "0" * 64}))
    # a finished run whose final checkpoint matches its record: evaluation would get past loading it
    (runs / "pt-00000000000d.json").write_text(json.dumps(
        {"run_id": "pt-00000000000d", "kind": "pretrain", "status": "done", "config": build_config("tiny").to_dict(),
         "last_checkpoint": final, "last_checkpoint_sha256": hashlib.sha256((work / "ckpt-000000000008.pt")
                                                                             .read_bytes()).hexdigest()}))
    return tmp_path


def snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def figures():
    """The default figure folder (in the checkout, not the test's folder): names and modification times."""
    out = Path(DEFAULT_OUT)
    return {str(p): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))} if out.is_dir() else {}


CASES = [
    # commands, options and ablation names
    (["frobnicate"], "invalid choice"),
    (["pretrain", "--bogus"], "unrecognized arguments"),
    (["pretrain", "--preset", "huge"], "unknown preset 'huge'"),
    (["run", "mask_rato"], "did you mean mask_ratio"),
    (["run", "../../etc/passwd"], "unknown ablation '../../etc/passwd'"),
    (["run", "mask_ratio", "--seeds", "0"], "must be a positive number, got 0"),
    (["status", "mask_ratio", "--seeds", "-2"], "must be a positive number, got -2"),
    # config keys, types and ranges
    (["pretrain", "model.mask_ration=0.5"], "did you mean model.mask_ratio"),
    (["pretrain", "pretrain.epochs=ten"], "pretrain.epochs must be int"),
    (["pretrain", "pretrain.epochs=-1"], "pretrain.epochs must be >= 1, got -1"),
    (["pretrain", "pretrain.batch_size=0"], "pretrain.batch_size must be >= 1, got 0"),
    (["pretrain", "pretrain.blr=-1"], "pretrain.blr must be > 0"),
    (["pretrain", "model.mask_ratio=1.5"], "model.mask_ratio must be in (0, 1)"),
    (["pretrain", "model.img_size=30"], "not a positive multiple of the patch size 4"),
    (["pretrain", "data.augmentation=bogus"], "data.augmentation='bogus' is not one of"),
    (["pretrain", "pretrain.epochs=__import__('os').system('touch PWNED')"], "pretrain.epochs must be int"),
    (["pretrain", "pretrain.epochs"], "is not of the form key=value"),
    (["run", "mask_ratio", "model.mask_ratio=2"], "model.mask_ratio must be in (0, 1)"),
    # every key against its declaration (core/settings.py): ranges, finiteness, forms
    (["pretrain", "pretrain.weight_decay=-0.05"], "pretrain.weight_decay must be >= 0, got -0.05"),
    (["pretrain", "pretrain.clip_grad=-1"], "pretrain.clip_grad must be > 0, got -1.0"),
    (["pretrain", "pretrain.lr=1e999"], "pretrain.lr must be a finite number > 0, got inf"),
    (["pretrain", "pretrain.min_lr=-1e-6"], "pretrain.min_lr must be >= 0"),
    (["eval", "finetune", "eval.finetune.drop_path=1"], "eval.finetune.drop_path must be in [0, 1), got 1.0"),
    (["eval", "scratch", "eval.scratch.smoothing=-0.1"], "eval.scratch.smoothing must be in [0, 1), got -0.1"),
    (["eval", "finetune", "eval.finetune.randaug=rand-m9-nonsense"], "is not a RandAugment spec like"),
    (["eval", "scratch", "eval.scratch.randaug=randaug9"], "is not a RandAugment spec like"),
    (["pretrain", "pretrain.batch_size=2048"], "pretrain.batch_size=2048 is larger than the 1438 training images"),
    (["eval", "finetune", "data.dataset=synthetic", "data.synthetic_size=16", "pretrain.batch_size=8"], "eval.finetune.batch_size=32 is larger "
     "than the 16 training images"),
    (["run", "mask_ratio", "eval.knn.temperature=0"], "eval.knn.temperature must be > 0"),
    (["config", "eval.scratch.ema=1"], "eval.scratch.ema must be in [0, 1), got 1.0"),
    (["pretrain", "data.fingerprint=../../x"], "is not 16 hex digits or empty"),
    # dataset paths
    (["pretrain", "--preset", "tiny", "data.dataset=imagefolder"], "data.path is required"),
    (["pretrain", "--preset", "tiny", "data.dataset=imagefolder", "data.path=/nonexistent/imagenet"], "does not exist"),
    (["pretrain", "--preset", "tiny", "data.dataset=imagefolder", "data.path={tmp}/file.txt"], "is not a directory"),
    (["pretrain", "--preset", "tiny", "data.dataset=imagefolder", "data.path={tmp}/empty"], "holds no images"),
    # a dataset path the default tiny preset would silently not use
    (["pretrain", "data.path={tmp}/empty"], "no preset: the default preset tiny trains a tiny model on its built-in "
                                            "digits; pass --preset paper"),
    (["eval", "finetune", "data.dataset=imagefolder"], "no preset: the default preset tiny"),
    (["submit", "mask_ratio", "data.path=/datasets/imagenet"], "pass --preset paper"),
    (["pretrain", "--preset", "tiny", "data.path={tmp}/empty"], "would be ignored: preset tiny trains on "
                                                                "data.dataset=digits; pass --preset paper"),
    (["run", "mask_ratio", "--preset", "paper", "data.dataset=synthetic", "data.path=/x"],
     "data.path=/x would be ignored: preset paper trains on data.dataset=synthetic; set data.dataset=imagefolder"),
    (["status", "--watch", "soon"], "argument --watch: 'soon' is not a number"),
    # checkpoints and run ids
    (["eval", "linprobe", "--init", "{tmp}/vit_small.pth"], "embed dim 384 (vit_small_patch16?)"),
    (["eval", "linprobe", "--init", "{tmp}/notes.txt"], "is not a loadable checkpoint"),
    (["eval", "linprobe", "--init", "{tmp}/list.pth"], "is not a checkpoint (expected a dict, got list)"),
    (["eval", "linprobe", "--init", "{tmp}/evil.pth"], "is not a loadable checkpoint"),
    (["eval", "knn", "--init", "{tmp}/missing.pth"], "does not exist"),
    (["eval", "knn", "--run", "../../etc/passwd"], "invalid run id '../../etc/passwd'"),
    (["eval", "knn", "--run", "/etc/passwd"], "invalid run id '/etc/passwd'"),
    (["eval", "knn", "--run", "pt-000000000009"], "no run record for pt-000000000009"),
    (["compare", "mask_ratio/0.33"], "ablation mask_ratio has no variant '0.33' at preset tiny"),
    (["eval", "svm"], "invalid choice: 'svm'"),
    (["eval", "partial", "--init", "{tmp}/vit_small.pth"], "needs eval.finetune.blocks"),
    # a finished run's final checkpoint is what its record says, or evaluation stops (no older one)
    (["eval", "knn", "--run", "pt-00000000000f"], "does not match the checksum in its record"),
    (["eval", "linprobe", "--run", "pt-00000000000e"], "ckpt-000000000009.pt, is missing; an older one is not used"),
    # refused before the run writes its record, lock or figures (run_all.preflight)
    (["pretrain", "--preset", "tiny", "model.target=dvae_token", "model.dvae_path={tmp}/notes.txt"],
     "model.dvae_path={tmp}/notes.txt is not a DALL-E encoder.pkl"),
    (["pretrain", "--preset", "tiny", "model.target=dvae_token", "model.dvae_path={tmp}/evil.pth"],
     "is not a DALL-E encoder.pkl (refused global"),
    (["eval", "linprobe", "--run", "pt-00000000000d", "data.dataset=synthetic", "data.synthetic_size=64",
      "eval.linprobe.batch_size=100000"], "eval.linprobe.batch_size=100000 is larger than the 64 training images"),
    (["submit", "mask_ratio", "--preset", "tiny", "--dry-run", "--time", "99:99:99"],
     "cluster.time='99:99:99' has 99 minutes, at most 59"),
    (["plots", "--preset", "tiny", "--reconstruct", "../../x"], "invalid run id '../../x'"),
    (["plots", "--reconstruct", "pt-00000000000d", "--reconstruct", "pt-000000000009"],
     "no run record for pt-000000000009"),
    (["list", "--preset", "nosuch"], "unknown preset 'nosuch'"),
    # an unknown preset is refused by every command that takes one
    *[([*cmd, "--preset", "nosuch"], "unknown preset 'nosuch'")
      for cmd in (["config"], ["tokenizer"], ["eval", "knn"], ["eval", "scratch"], ["demo"], ["run"], ["status"],
                  ["submit", "--dry-run"], ["cancel"], ["tables"], ["plots"], ["report"], ["compare", "mask_ratio"])],
]


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, capsys, args, needle):
    before, figures_before = snapshot(world), figures()
    args = [a.format(tmp=world) for a in args]
    needle = needle.format(tmp=world)
    try:
        # into the test's folder (`list` takes no key=value words and writes nothing)
        code = run_all.main(args + ([] if args[0] == "list" else ["run.results_dir=results", "run.work_dir=work"]))
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert snapshot(world) == before  # nothing written, nothing changed, no code run
    assert figures() == figures_before
    assert not (world / "PWNED").exists()


def test_exit_status_of_the_script(tmp_path):
    out = run_cli("pretrain", "model.mask_ratio=1.5", f"run.results_dir={tmp_path}/results",
                  f"run.work_dir={tmp_path}/work", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: model.mask_ratio must be in (0, 1), got 1.5"
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


def test_a_refused_pickle_is_our_one_line_without_torchs_warnings(world):
    out = run_cli("eval", "linprobe", "--init", str(world / "evil.pth"), cwd=world)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith("error: ") and "is not a loadable checkpoint" in out.stderr
    assert not (world / "PWNED").exists()


def test_pretrain_prints_where_things_went(tmp_path):
    out = run_cli("pretrain", "--quiet", "data.dataset=synthetic", "data.synthetic_size=64", "pretrain.epochs=1",
                  "pretrain.warmup_epochs=0", "pretrain.batch_size=32", f"run.results_dir={tmp_path}/results",
                  f"run.work_dir={tmp_path}/work")
    assert out.returncode == 0, out.stderr
    assert f"{tmp_path}/results/runs/pt-" in out.stdout and f"{tmp_path}/work/pt-" in out.stdout
