"""Cluster submission: settings, arrays and dependencies, GPU-hour estimates, bad input, and real jobs
on the session's single-node SLURM cluster (tests/slurm_cluster.py): an array sweep, a job requeued
mid-run that resumes from its own checkpoint, a 2-task gloo DDP job, cancel, dry run."""
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core import results
from core.cluster import arrays as cluster_arrays, checks as cluster_checks, estimates as cluster_estimates, \
    jobs as cluster_jobs, settings as cluster_settings, status as cluster_status, submit
from core.cluster.job import ClusterJob
from core.config import build_config
from core.errors import ConfigError, UserError
from core.sweep import Plan, Unit
from tests.conftest import FAST, ROOT

try:  # one fixture module object, also when pytest put only tests/ on sys.path
    import tests.slurm_fixture  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.slurm_cluster import wait_until  # noqa: E402
from tests.slurm_fixture import slurm_cluster  # noqa: F401,E402  (fixture)

import run_all  # noqa: E402


def tiny(root, *extra, values=None, cpus=1):
    """A fast synthetic config writing under `root`, one CPU per task for the 2-CPU test node."""
    return build_config("tiny", FAST + [f"run.results_dir={root}/results", f"run.work_dir={root}/work",
                                        f"cluster.cpus_per_task={cpus}", *extra], values)


def plan_of(*cfgs, users=None) -> Plan:
    plan = Plan(cfgs[0].run.preset)
    for i, cfg in enumerate(cfgs):
        who = (users or [("mask_ratio", str(cfg.model.mask_ratio))] * len(cfgs))[i]
        plan.units[cfg.run_id()] = Unit("pretrain", cfg.run_id(), cfg, users=[(*who, 0)])
    return plan


# --------------------------------------------------------------------------- no cluster needed

@pytest.mark.parametrize("text, minutes", [("90", 90), ("48:00:00", 2880), ("1:30", 2), ("2-00:00:00", 2880),
                                           ("1-12", 2160), ("0-01:30", 90), ("1-23:59:59", 2880),
                                           ("100:59", 101)])
def test_sbatch_time_formats(text, minutes):
    assert cluster_checks.parse_time(text) == minutes


@pytest.mark.parametrize("override, needle", [
    ("cluster.time='2 days'", "is not an sbatch time"),
    ("cluster.time='0:30'", "less than a minute"),
    ("cluster.time='99:99:99'", "has 99 minutes, at most 59 after the first field"),
    ("cluster.time='1:00:60'", "has 60 seconds, at most 59"),
    ("cluster.time='90:60'", "has 60 seconds, at most 59"),
    ("cluster.time='1-24'", "has 24 hours, at most 23 after the days"),
    ("cluster.time='2-12:60'", "has 60 minutes, at most 59"),
    ("cluster.sbatch=('--exclusive',)", "is not KEY=VALUE"),
    ("cluster.executor=k8s", "is not one of: auto, slurm, local, debug"),
    ("cluster.nodes=0", "cluster.nodes must be >= 1"),
    ("cluster.max_requeues=-1", "cluster.max_requeues must be >= 0"),
])
def test_bad_cluster_settings(override, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config("paper", [override])


def test_cluster_settings_are_not_part_of_run_ids():
    a = build_config("paper")
    b = build_config("paper", ["cluster.partition='gpu'", "cluster.nodes=2", "cluster.time='1:00:00'",
                               "cluster.sbatch=('exclusive=',)", "cluster.job_dir=/shared/jobs"])
    assert a.run_id() == b.run_id()
    from core.eval import eval_run_id
    assert eval_run_id(a, "linprobe") == eval_run_id(b, "linprobe")


def test_paper_pretraining_estimate_matches_its_source():
    """Default sustained rate: the official ViT-L recipe takes ~42 h on 64 V100s for 800 epochs."""
    cfg = build_config("paper")
    hours = cluster_estimates.gpu_hours(cluster_estimates.unit_flops(Unit("pretrain", cfg.run_id(), cfg)), cfg.cluster.sustained_tflops)
    assert hours == pytest.approx(42 * 64, rel=0.01)
    evals = {k: cluster_estimates.unit_flops(Unit(k, k, cfg if k != "partial" else
                                       build_config("paper", ["eval.finetune.blocks=4"]), cfg.run_id()))
             for k in ("finetune", "linprobe", "knn", "partial", "scratch")}
    assert evals["scratch"] > evals["finetune"] > evals["linprobe"] > evals["partial"] > evals["knn"] > 0


def units(*specs):
    """Units from (run id, parent) pairs, enough for build_arrays."""
    cfg = build_config("tiny")
    return [Unit("pretrain" if p is None else "linprobe", rid, cfg, p) for rid, p in specs]


def test_arrays_align_evaluations_with_their_pretraining_task():
    todo = units(("pt-b", None), ("pt-a", None), ("sc-1", None), ("lp-a", "pt-a"), ("knn-a", "pt-a"),
                 ("lp-done", "pt-done"), ("lp-q", "pt-q"))
    arrays = cluster_arrays.build_arrays(None, todo, {"pt-q": "77_2"}, "slurm")
    first, chained, waiting, ready = arrays
    assert [t[0].run_id for t in first.tasks] == ["pt-a", "pt-b", "sc-1"]  # with evaluations first
    assert [[u.run_id for u in t] for t in chained.tasks] == [["lp-a", "knn-a"]] and chained.after is first
    first.job_ids = ["90_0", "90_1", "90_2"]
    assert chained.dependency() == "aftercorr:90"  # task i after task i of array 90
    first.job_ids = ["91"]  # a one-task "array" is a plain job
    assert chained.dependency() == "afterok:91"
    assert [t[0].run_id for t in waiting.tasks] == ["lp-q"] and waiting.dependency() == "afterok:77_2"
    assert [t[0].run_id for t in ready.tasks] == ["lp-done"] and ready.dependency() is None
    local = cluster_arrays.build_arrays(None, todo, {}, "local")  # no dependencies there: one job, in plan order
    assert len(local) == 1 and [u.run_id for u in local[0].tasks[0]] == [u.run_id for u in todo]


def test_sbatch_settings_follow_the_config():
    cfg = build_config("paper", ["cluster.partition='learn'", "cluster.account='1234'", "cluster.mem='480G'",
                                 "cluster.sbatch=('exclusive=', 'mail-type=END')"])
    text = cluster_arrays.sbatch_text(cfg, "/shared/jobs", cluster_arrays.slurm_parameters(cfg, "pretrain", 5, "aftercorr:7"), 5)
    for line in ("--partition=learn", "--account=1234", "--nodes=8", "--gpus-per-node=8", "--ntasks-per-node=8",
                 "--cpus-per-task=10", "--mem=480G", "--time=2880", "--signal=USR2@120", "--array=0-4%5",
                 "--dependency=aftercorr:7", "--kill-on-invalid-dep=yes", "--requeue", "--exclusive",
                 "--mail-type=END"):
        assert f"#SBATCH {line}\n" in text, line
    assert "gpus_per_node" not in cluster_arrays.slurm_parameters(tiny("/x"), "pretrain", 1)
    # the job runs this interpreter, which imports the installed suite: no PYTHONPATH is set
    assert f"{sys.executable} -u -m submitit.core._submit /shared/jobs" in text and "PYTHONPATH" not in text


def test_the_jobs_interpreter_imports_this_checkout_from_any_folder(tmp_path):
    """Jobs start `python -m submitit.core._submit` in the folder `submit` ran from, with no sys.path
    or PYTHONPATH edits: the suite must be installed in that python (make install: pip install -e .)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", "import ablations, core, plots; print(core.__file__)"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"the suite is not installed in {sys.executable}: run make install\n{out.stderr[-300:]}"
    assert Path(out.stdout.strip()).resolve() == Path(ROOT, "core", "__init__.py").resolve(), \
        f"{sys.executable} imports another checkout's core ({out.stdout.strip()}): make install here"


def test_requeue_count_is_bounded(monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    job = ClusterJob("tiny", [], max_requeues=2)
    again = job.checkpoint()
    assert again.function is job and job.requeues == 1  # the same object: the same units, resumed
    job.checkpoint()
    assert job.requeues == 2 and job.checkpoint() is None  # at the bound submitit ends the job
    monkeypatch.setenv("SLURM_RESTART_COUNT", "5")  # requeues SLURM did itself count too
    assert ClusterJob("tiny", [], max_requeues=5).checkpoint() is None


def test_requeue_waits_for_the_loop_to_save():
    """submitit's USR2 handler (here a stand-in recording its calls) must not run while a training
    loop is listening: the loop is asked to stop, and the handler runs once the loop has saved."""
    import signal

    from core.cluster.job import DeferredRequeue

    calls, stops = [], []
    old_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    def submitit_handler(signum, frame):
        calls.append(signum)
    old_usr2 = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with DeferredRequeue() as deferred:
            signal.signal(signal.SIGUSR1, lambda s, f: stops.append(s))  # core.distributed.StopFlag while training
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stops == [signal.SIGUSR2] and calls == [] and deferred.asked
            deferred.requeue()  # after the checkpoint
            assert calls == [signal.SIGUSR2]
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # between units: nothing to save, requeue now
            os.kill(os.getpid(), signal.SIGUSR2)
            assert len(calls) == 2
            deferred.guard(lambda: stops.append("next unit"))()  # a late signal requeues before the next unit
            assert len(calls) == 3 and stops[-1] == "next unit"
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # given back
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGUSR2, old_usr2)


def cli(capsys, *args):
    code = run_all.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, needle):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


def test_bad_input_is_one_line_and_submits_nothing(capsys, monkeypatch, tmp_path):
    d = [f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work"]
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    for args, needle in (
            (["--cluster", "slurm"], "--cluster slurm but sbatch is not on PATH"),
            (["--cluster", "local", "--nodes", "0"], "cluster.nodes must be >= 1, got 0"),
            (["--cluster", "local", "--preset", "paper", "--nodes", "1", "--gpus-per-node", "0"],
             "--gpus-per-node must be >= 1, got 0 (CPU-only jobs: run.device=cpu)"),
            (["--cluster", "local", "--job-dir", str(tmp_path / "file" / "jobs")], "is not writable"),
            (["--cluster", "local", "--nodes", "2"], "--cluster local runs on this machine: use --nodes 1")):
        code, _, err = cli(capsys, "submit", "mask_token", *args, *d)
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "results").exists()


def test_dry_run_prints_jobs_settings_and_gpu_hours(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a laptop: no SLURM, yet the paper sweep's jobs can be seen
    code, out, err = cli(capsys, "submit", "mask_token", "--preset", "paper", "--cluster", "slurm", "--dry-run",
                         "--partition", "learnlab", f"run.results_dir={tmp_path}/results")
    assert code == 0, err
    assert "#SBATCH --partition=learnlab" in out and "#SBATCH --array=0-1%2" in out
    assert "#SBATCH --dependency=aftercorr:PRETRAIN_ARRAY_ID" in out
    jobs = [ln for ln in out.splitlines() if ln.strip().startswith("job ")]
    assert len(jobs) == 4 and all("GPU-h" in ln for ln in jobs)  # 2 pretraining + 2 evaluation tasks
    assert "GPU-hours at 13.2 TFLOP/s" in out and "dry run: nothing submitted" in out
    assert not (tmp_path / "results").exists()


def test_local_executor_runs_the_plan_in_a_background_process(tmp_path):
    cfg = tiny(tmp_path, "cluster.executor=local", "pretrain.epochs=1", "pretrain.warmup_epochs=0")
    [array] = submit.submit_plan(plan_of(cfg), cfg, submit.prepare(cfg), log=lambda *a: None)
    entry = cluster_jobs.load_jobs(cfg)["units"][cfg.run_id()]
    assert entry["cluster"] == "local" and entry["job_id"] == array.job_ids[0]
    deadline = time.monotonic() + 120
    while cluster_jobs.job_states([entry])[entry["job_id"]] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster_jobs.job_states([entry])[entry["job_id"]] == "COMPLETED", log_tails(cfg)
    assert results.read_record(cfg.run.results_dir, cfg.run_id())["status"] == "done"


# --------------------------------------------------------------------------- on the SLURM test cluster

def log_tails(cfg, lines=15) -> str:
    out = []
    for path in sorted(glob.glob(os.path.join(cluster_settings.job_dir(cfg), "*_log.*"))):
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
        out.append(f"== {path}\n" + "\n".join(text))
    return "\n".join(out)


def wait_for(what, predicate, timeout, cfgs=(), cluster=None):
    return wait_until(what, predicate, timeout,
                      lambda: "\n".join(log_tails(c) for c in cfgs) + (cluster.logs() if cluster else ""))


def slurm_states(*job_ids) -> dict:
    return cluster_jobs.job_states([{"job_id": j, "cluster": "slurm"} for j in job_ids])


def wait_ended(cfg, job_ids, cluster, timeout=180) -> dict:
    return wait_for(f"jobs {job_ids} to end",
                    lambda: (s := slurm_states(*job_ids)) and not set(s.values()) & cluster_jobs.LIVE and s,
                    timeout, [cfg], cluster)


def sacct_jobs() -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-a", "-o", "JobID"], capture_output=True, text=True)
    return out.stdout.split()


def sacct_history(job_id) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-o", "State", "-j", job_id], capture_output=True,
                         text=True)
    return out.stdout.split()


def slurm_cfg(root, *extra, **kw):
    return tiny(root, "cluster.executor=slurm", *extra, **kw)


def test_partition_slurm_rejects_is_one_line(slurm_cluster, capsys, tmp_path):
    before = sacct_jobs()
    code, _, err = cli(capsys, "submit", "mask_token", "--cluster", "slurm", "--partition", "nope",
                       f"run.results_dir={tmp_path}/results")
    assert_one_line_error(code, err, "SLURM rejects the job settings: invalid partition specified: nope")
    assert sacct_jobs() == before and not (tmp_path / "results" / "sweeps" / "tiny" / "jobs.json").exists()


def test_dry_run_submits_nothing(slurm_cluster, tmp_path):
    before = sacct_jobs()
    cfg = slurm_cfg(tmp_path)
    lines = []
    arrays = submit.submit_plan(plan_of(cfg), cfg, submit.prepare(cfg, dry_run=True), dry_run=True,
                                log=lines.append)
    assert len(arrays) == 1 and "dry run: nothing submitted" in lines and "  #SBATCH --cpus-per-task=1" in lines
    time.sleep(1)
    assert sacct_jobs() == before and not (tmp_path / "results").exists()


def test_array_sweep_lands_both_records(slurm_cluster, tmp_path, capsys):
    """`submit mask_token` (2 variants): a pretraining array, then an evaluation array whose task i
    starts after pretraining task i (aftercorr); every record lands; `status` shows the jobs."""
    from core.ablation import select
    from core.sweep import make_plan

    overrides = FAST + ["pretrain.epochs=1", "pretrain.warmup_epochs=0", "eval.linprobe.epochs=1",
                        "eval.linprobe.warmup_epochs=0", "eval.linprobe.batch_size=64", "eval.knn.k=5",
                        f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work"]
    code, out, err = cli(capsys, "submit", "mask_token", "--cluster", "slurm", "--cpus-per-task", "1", *overrides)
    assert code == 0, err
    cfg = build_config("tiny", overrides + ["cluster.cpus_per_task=1"])
    plan = make_plan(select(["mask_token"]), "tiny", 1, overrides)
    data = cluster_jobs.load_jobs(cfg)
    [(pt_ids, _), (ev_ids, dependency)] = [(a["job_ids"], a["dependency"]) for a in data["submissions"][0]["arrays"]]
    assert len(pt_ids) == len(ev_ids) == 2 and dependency == f"aftercorr:{pt_ids[0].split('_')[0]}"
    assert f"submitted pretrain: {pt_ids[0].split('_')[0]}_[0-1]" in out
    states = wait_ended(cfg, pt_ids + ev_ids, slurm_cluster)
    assert set(states.values()) == {"COMPLETED"}, log_tails(cfg)
    for unit in plan.pretrains:
        assert results.read_record(cfg.run.results_dir, unit.run_id)["status"] == "done"
    assert all(results.read_record(cfg.run.results_dir, u.run_id)["status"] == "done" for u in plan.evals)
    code, out, _ = cli(capsys, "status", "mask_token", *overrides)
    assert code == 0 and out.count("COMPLETED") == 4 and all(j in out for j in pt_ids + ev_ids)
    code, out, _ = cli(capsys, "submit", "mask_token", "--cluster", "slurm", *overrides)
    assert code == 0 and "6 done, 0 already queued or running, 0 to submit" in out  # nothing twice


def start_and_interrupt(cfg, job_id, cluster):
    """USR2 (what SLURM sends before the time limit) once the run trains: it must save and requeue."""
    wait_for("the run to start training", lambda: (r := results.read_record(cfg.run.results_dir, cfg.run_id()))
             and r["status"] == "running", 120, [cfg], cluster)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)


def preempted_checkpoint(cfg) -> str:
    logs = "".join(Path(p).read_text() for p in glob.glob(os.path.join(cluster_settings.job_dir(cfg), "*_log.out")))
    found = [ln.split("; checkpoint ")[1].strip() for ln in logs.splitlines()
             if ln.startswith("preempted: ") and "; checkpoint " in ln]  # ranks > 0 write none
    assert found, "the job was not preempted (it finished before the signal?)\n" + log_tails(cfg)
    return found[0]


def test_requeued_job_resumes_from_its_checkpoint_bit_identical(slurm_cluster, tmp_path):
    long = ["data.synthetic_size=384", "pretrain.epochs=4", "pretrain.checkpoint_every=100"]  # 48 steps
    cut, ref = slurm_cfg(tmp_path / "cut", *long), slurm_cfg(tmp_path / "ref", *long)
    jobs = [submit.submit_plan(plan_of(c), c, submit.prepare(c), log=lambda *a: None)[0].job_ids[0]
            for c in (cut, ref)]
    start_and_interrupt(cut, jobs[0], slurm_cluster)
    states = wait_ended(cut, jobs, slurm_cluster)
    assert set(states.values()) == {"COMPLETED"}, log_tails(cut)
    assert "REQUEUED" in sacct_history(jobs[0]) and "REQUEUED" not in sacct_history(jobs[1])
    rec = results.read_record(cut.run.results_dir, cut.run_id())
    assert rec["status"] == "done" and rec["resumed_from"] == preempted_checkpoint(cut)  # exactly that one
    a, b = (torch.load(results.read_record(c.run.results_dir, c.run_id())["last_checkpoint"], weights_only=True)
            for c in (cut, ref))
    assert a["global_step"] == b["global_step"] == 48
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]), "not bit-identical"
    assert a["history"] == b["history"]


def test_two_task_gloo_job_requeued_matches_one_process(slurm_cluster, tmp_path, monkeypatch):
    """A 2-process DDP job (gloo, rank/world/master from submitit) stopped by USR2: both ranks stop at
    the same step, rank 0 saves and requeues, the requeued job resumes; the weights match a
    1-process run with the same global batch (tolerance of tests/test_distributed.py)."""
    from tests.test_distributed import DDP_ATOL, assert_weights_close, one_thread
    from core.train import pretrain

    ddp = ["model.mask_strategy=grid", "pretrain.epochs=6", "pretrain.precision=fp32"]  # as test_distributed  # 48 steps of 2 x 16 images
    cfg = slurm_cfg(tmp_path / "ddp", *ddp, "cluster.tasks_per_node=2")
    [array] = submit.submit_plan(plan_of(cfg), cfg, submit.prepare(cfg), log=lambda *a: None)
    start_and_interrupt(cfg, array.job_ids[0], slurm_cluster)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    one = tiny(tmp_path / "one", *ddp)
    with one_thread():  # while the job runs
        pretrain(one, progress=False)
    states = wait_ended(cfg, array.job_ids, slurm_cluster)
    assert set(states.values()) == {"COMPLETED"}, log_tails(cfg)
    assert "REQUEUED" in sacct_history(array.job_ids[0])
    rec = results.read_record(cfg.run.results_dir, cfg.run_id())
    assert rec["world_size"] == 2 and rec["resumed_from"] == preempted_checkpoint(cfg)
    weights = [torch.load(results.read_record(c.run.results_dir, c.run_id())["last_checkpoint"],
                          weights_only=True)["model"] for c in (cfg, one)]
    assert_weights_close(*weights, atol=DDP_ATOL)


def test_cancel_keeps_jobs_other_ablations_share(slurm_cluster, tmp_path):
    endless = ["pretrain.epochs=1000"]
    own = slurm_cfg(tmp_path, *endless, values={"model.mask_ratio": 0.5})
    shared = slurm_cfg(tmp_path, *endless, values={"model.mask_ratio": 0.75})
    plan = plan_of(own, shared, users=[("mask_ratio", "0.5"), ("mask_ratio", "0.75")])
    plan.units[shared.run_id()].users.append(("decoder_depth", "8", 0))  # the shared baseline
    [array] = submit.submit_plan(plan, own, submit.prepare(own), log=lambda *a: None)
    lines = []
    assert cluster_status.cancel(["mask_ratio"], plan, own, log=lines.append) == [array.job_ids[0]]
    assert any(ln.startswith(f"kept {array.job_ids[1]} (also used by decoder_depth)") for ln in lines)

    def states():
        return cluster_jobs.job_states(list(cluster_status.plan_jobs(plan, own)[1].values()))
    wait_for("the first job to be cancelled", lambda: states()[array.job_ids[0]] == "CANCELLED", 30, [own])
    assert states()[array.job_ids[1]] in cluster_jobs.LIVE
    assert cluster_status.cancel(["all"], plan, own, log=lines.append) == [array.job_ids[1]]
    wait_for("both cancelled", lambda: set(states().values()) == {"CANCELLED"}, 30, [own])
    assert "\n".join(cluster_status.status_lines(plan, own)).count("CANCELLED") == 2


def test_dry_run_without_a_reachable_controller_still_prints_the_plan(monkeypatch):
    """sbatch installed but no cluster configured (a laptop with the Debian package): a dry run notes
    that SLURM could not check the settings and goes on; a real submission refuses."""
    no_cluster = "sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n" \
                 "sbatch: fatal: Could not establish a configuration source\n"
    monkeypatch.setattr(cluster_arrays.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a[0], 1, "", no_cluster))
    notes = []
    cluster_arrays.preflight("#!/bin/bash\n", dry_run=True, log=notes.append)
    assert len(notes) == 1 and "settings are not checked" in notes[0]
    with pytest.raises(UserError, match="SLURM rejects the job settings: .*configuration source"):
        cluster_arrays.preflight("#!/bin/bash\n")
    refused = "sbatch: error: invalid partition specified: nope\n"
    monkeypatch.setattr(cluster_arrays.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a[0], 1, "", refused))
    with pytest.raises(UserError, match="invalid partition specified: nope"):  # a real refusal, even dry
        cluster_arrays.preflight("#!/bin/bash\n", dry_run=True, log=notes.append)


def test_a_variant_failing_at_run_time_is_failed_with_its_reason_and_its_evaluation_not_run(slurm_cluster, tmp_path):
    """One variant of a two-variant sweep fails on the node before training starts (DALL-E's encoder
    is not at model.dvae_path): its record says why, with the job id and log; `status` lists it
    failed with that reason and its evaluation (cancelled by SLURM's dependency) as not run."""
    from core.ablation import Ablation
    from core.sweep import make_plan

    two = Ablation(name="two", source="extra", title="one variant fails", baseline="pixel",
                   variants={"pixel": {}, "dvae": {"model.target": "dvae_token"}}, small_evals=("knn",))
    overrides = FAST + ["pretrain.epochs=1", "pretrain.warmup_epochs=0", "eval.knn.k=5",
                        "model.dvae_path=/nowhere/encoder.pkl", f"run.results_dir={tmp_path}/results",
                        f"run.work_dir={tmp_path}/work", "cluster.executor=slurm", "cluster.cpus_per_task=1"]
    plan = make_plan([two], "tiny", 1, overrides)
    cfg = build_config("tiny", overrides)
    arrays = submit.submit_plan(plan, cfg, submit.prepare(cfg), log=lambda *a: None)
    ids = [j for a in arrays for j in a.job_ids]
    wait_ended(cfg, ids, slurm_cluster)
    pixel, dvae = plan.pretrains
    rec = results.read_record(cfg.run.results_dir, dvae.run_id)
    assert rec["status"] == "failed", log_tails(cfg)
    assert rec["reason"].startswith("model.dvae_path=/nowhere/encoder.pkl does not exist")
    assert rec["job_id"] in ids and "does not exist" in Path(rec["job_stderr"]).read_text()
    assert Path(rec["job_stdout"]).exists()
    [ev] = [u for u in plan.evals if u.parent == dvae.run_id]
    lines = []
    run_all.print_status(plan, cfg, out=lines.append)
    assert f"  failed pretrain {dvae.run_id} (two/dvae): {rec['reason']}" in lines, "\n".join(lines)
    assert f"  not run knn {ev.run_id} (two/dvae): parent failed: {dvae.run_id}" in lines, "\n".join(lines)
    [row] = [ln for ln in lines if ln.startswith("two ")]
    assert row.split()[1:] == ["2", "0", "0", "0", "0", "1", "0", "1", "0"]  # pixel + its kNN done
    logs = Path(results.read_record(cfg.run.results_dir, pixel.run_id)["job_stdout"]).read_text()
    assert f"pretrain {pixel.run_id} epoch 1/1 done step 8/8 loss " in logs  # a log a user can tail


def sacct_times(*job_ids) -> dict:
    """{job id: (start, end)} from SLURM's accounting (ISO times, second resolution)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,Start,End", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60).stdout
    return {j: (s, e) for j, s, e in (ln.split("|") for ln in out.split()) if j in job_ids}


def test_target_sweep_trains_its_tokenizer_once_before_its_users(slurm_cluster, tmp_path, capsys):
    """The `target` sweep on SLURM with no manual tokenizer step: the tokenizer and the PCA basis are
    a `prepare` array; the runs reading each start after its task (afterok), by SLURM's accounting
    and by the records' times; the tokenizer is trained once; `status` shows its unit. To keep it
    short: the plan `submit target` makes, less the variants that read no artifact and the
    evaluations (the full sweep: 17 units, 12 jobs, 320 s on the 2-CPU test node)."""
    from core.ablation import select
    from core.sweep import make_plan

    overrides = FAST + ["pretrain.epochs=1", "pretrain.warmup_epochs=0", "model.dvae_epochs=1",
                        f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work",
                        "cluster.executor=slurm", "cluster.cpus_per_task=1"]
    plan = make_plan(select(["target"]), "tiny", 1, overrides)
    plan.units = {rid: u for rid, u in plan.units.items() if u in plan.artifacts or u.needs}
    assert [u.kind for u in plan.units.values()] == ["pca", "tokenizer", "pretrain", "pretrain"]
    cfg = build_config("tiny", overrides)
    submit.submit_plan(plan, cfg, submit.prepare(cfg), log=lambda *a: None)
    data = cluster_jobs.load_jobs(cfg)
    arrays = data["submissions"][0]["arrays"]
    assert arrays[0]["stage"] == "prepare" and arrays[0]["dependency"] is None, arrays
    every = [j for a in arrays for j in a["job_ids"]]
    states = wait_ended(cfg, every, slurm_cluster, timeout=300)
    assert set(states.values()) == {"COMPLETED"}, log_tails(cfg)
    times = sacct_times(*every)
    for art in plan.artifacts:
        [user] = [u for u in plan.pretrains if u.needs == art.run_id]
        art_job, job = data["units"][art.run_id]["job_id"], data["units"][user.run_id]["job_id"]
        art_rec = results.read_record(cfg.run.results_dir, art.run_id)
        assert art_rec["status"] == "done" and art_rec["job_id"] == art_job
        [dep] = [a["dependency"] for a in arrays if job in a["job_ids"]]
        assert dep == f"afterok:{art_job}"
        assert times[job][0] >= times[art_job][1], times  # started after the artifact's job ended
        assert results.read_record(cfg.run.results_dir, user.run_id)["started_at"] >= art_rec["finished_at"]
        with capsys.disabled():  # shown with -s
            print(f"{art.kind} job {art_job}: {times[art_job]}; {user.cfg.model.target} run job {job}: {times[job]}")
    logs = "".join(Path(p).read_text() for p in glob.glob(os.path.join(cluster_settings.job_dir(cfg), "*_log.out")))
    assert logs.count("training the dVAE tokenizer") == 1, logs[-3000:]  # once, in its own unit
    assert all(results.read_record(cfg.run.results_dir, rid)["status"] == "done" for rid in plan.units)
    code, out, _ = cli(capsys, "status", "target", *overrides)
    [tok] = [u for u in plan.artifacts if u.kind == "tokenizer"]
    tok_job = data["units"][tok.run_id]["job_id"]
    assert code == 0 and f"  {tok_job:<14} {'prepare':<9} {'COMPLETED':<12} {tok.run_id}\n" in out, out
