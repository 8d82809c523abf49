#!/usr/bin/env python
"""The suite's command line: pretrain, evaluate, run ablation sweeps, regenerate tables and plots.

    python run_all.py pretrain --preset tiny pretrain.epochs=5 model.mask_ratio=0.5

Every subcommand takes a preset and `key=value` overrides of core/config.py. Bad input gets one
line naming the problem and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from core.config import Config, apply_overrides, build_config, flat_dict, parse_override
from core.presets import PRESETS, REHEARSAL_OF, is_rehearsal
from core.errors import ConfigError, Preempted, TrainingFailed, UserError

# The subcommands import the rest of the suite when they run: torch, timm and matplotlib take seconds
# to import, and `--help`, `config` and one-line errors need none of them.
ROOT = os.path.dirname(os.path.abspath(__file__))


CONFIG_HINT = ("every key=value setting with its value, description, allowed range and paper table: "
               "python run_all.py config --preset PRESET [key=value ...]")


class Parser(argparse.ArgumentParser):
    def __init__(self, *a, **kw):
        kw.setdefault("epilog", CONFIG_HINT)  # every subcommand's --help points to `config`
        super().__init__(*a, **kw)

    def error(self, message):  # one line, not argparse's usage block
        print(f"error: {message} (see: python run_all.py {' '.join(self.prog.split()[1:])} --help)"
              if " " in self.prog else f"error: {message}", file=sys.stderr)
        sys.exit(2)


def add_config_args(p: argparse.ArgumentParser):
    p.add_argument("--preset", help="config preset (tiny, paper, ...; default tiny)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. pretrain.epochs=5")


def cmd_pretrain(args):
    from core.train import ckpt_dir, pretrain

    cfg = build_config(args.preset, args.overrides)
    rec = pretrain(cfg, progress=not args.quiet)
    m = rec.get("metrics", {})
    print(f"run {rec['run_id']}: {rec['status']}, loss {m.get('first_loss', float('nan')):.4f} -> "
          f"{m.get('final_loss', float('nan')):.4f}, {rec.get('wall_time_s', 0):.1f} s")
    print(f"record: {os.path.join(cfg.run.results_dir, 'runs', rec['run_id'] + '.json')}")
    print(f"checkpoint: {rec.get('last_checkpoint') or ckpt_dir(cfg, rec['run_id'])}")


def cmd_config(args):
    from core.config import all_keys, setting, value_of
    from core.fingerprint import resolve

    cfg = resolve(build_config(args.preset, args.overrides))  # the run id with the dataset's fingerprint
    flat = {key: value_of(cfg, key) for key in all_keys()}  # every component's settings, used or not
    width = max(len(f"{k} = {v!r}") for k, v in flat.items())
    print(f"# preset {args.preset}{' + ' + ' '.join(args.overrides) if args.overrides else ''}; "
          f"run id {cfg.run_id()}")
    section = None
    for key, value in flat.items():
        if key.rsplit(".", 1)[0] != section:
            section = key.rsplit(".", 1)[0]
            print(f"\n[{section}]")
        s = setting(key)  # core/settings.py, or the Param a component declares (core/registry.py)
        source = f" [{s.source}]" if s.source else ""
        print(f"{key + ' = ' + repr(value):<{width}}  # {s.help}; {s.check.describe()}{source}")


def cmd_tokenizer(args):
    from core.targets.dvae import tokenizer_job

    cfg = build_config(args.preset, args.overrides)
    rec = tokenizer_job(cfg, progress=not args.quiet)
    m = rec["metrics"]
    print(f"tokenizer {rec['run_id']}: {m['codes_used']} of {m['vocab']} codes used, perplexity {m['perplexity']:.1f}, "
          f"reconstruction MSE {m['recon_mse']:.4f} ({m['eval_images']} {m['eval_split']} images), "
          f"trained in {rec['wall_time_s']:.1f} s")
    print(f"record: {os.path.join(cfg.run.results_dir, 'runs', rec['run_id'] + '.json')}")
    print(f"weights: {rec['weights']}")


def cmd_data_beton(args):
    from core.ffcv.writer import convert

    for path, info in convert(args.src, args.out, max_res=args.max_res, jpeg_quality=args.jpeg_quality,
                              compress_prob=args.compress_prob, workers=args.workers,
                              on_corrupt=args.on_corrupt).items():
        print(f"wrote {path}: {info['num_samples'] - len(info['skipped'])} images, {len(info['classes'])} classes, "
              f"{len(info['skipped'])} unreadable skipped, {os.path.getsize(path) / 2**20:.1f} MiB, "
              f"{info['seconds']:.1f} s")


def cmd_data_tier(args):
    from core import dataprep

    if args.tool == "imagenet100":
        counts = dataprep.imagenet100(args.imagenet, args.out)
    else:
        counts = dataprep.cifar(args.tool, args.tarball, args.out)
    print(f"wrote {args.out}: {counts['train']} train and {counts['val']} val images "
          f"({'symlinked class folders' if args.tool == 'imagenet100' else 'PNG files'}); "
          f"use it with data.path={args.out} (docs/tiers.md)")


def cmd_eval(args):
    from core.eval import evaluate, scratch

    cfg = build_config(args.preset, args.overrides)
    if args.protocol == "scratch":
        rec = scratch(cfg, progress=not args.quiet)
    else:
        rec = evaluate(cfg, args.protocol, run_id=args.run, init=args.init, progress=not args.quiet,
                       eval_only=getattr(args, "eval_only", False), source=getattr(args, "baseline", None))
    m = rec.get("metrics", {})
    print(f"{rec['kind']} {rec['run_id']} of {rec['parent'] or 'a random init'}: {rec['status']}, "
          f"top-1 {m.get('top1', float('nan')):.2f}%, top-5 {m.get('top5', float('nan')):.2f}%, "
          f"{rec.get('wall_time_s', 0):.1f} s")
    print(f"record: {os.path.join(cfg.run.results_dir, 'runs', rec['run_id'] + '.json')}")


def split_targets(items):
    """Positional words are ablation names; words with '=' are config overrides."""
    names = [i for i in items if "=" not in i]
    return names, [i for i in items if "=" in i]


def cmd_list(args):
    from core.ablation import load_all
    from core.registry import REGISTRIES, plugin_entries

    rows = [(a.name, a.source, a.title, len(a.variants), len(a.variants_for(args.preset)),
             "+".join(a.evals_for(args.preset))) for a in load_all().values()]
    print(f"{'ablation':<18} {'paper':<9} {'variants':>8} {args.preset + ' variants':>14}  {'evaluations':<18} title")
    for name, src, title, n, n_small, evals in rows:
        print(f"{name:<18} {src:<9} {n:>8} {n_small:>14}  {evals:<18} {title}")
    for registry in REGISTRIES:  # the components: what model.arch, model.mask_strategy, model.target, eval take
        print(f"\n{registry.kind}s" + (f" ({registry.key})" if registry.key else "") + ":")
        for e in registry.entries():
            params = "".join(f"; {p.key}={p.default!r}" for p in e.params)
            print(f"  {e.name:<22} {e.help}{params}" + (f"  [{e.module}]" if not e.module.startswith("core.") else ""))
    if plugin_entries():
        print(f"\nplugins (MAE_PLUGINS): {os.pathsep.join(plugin_entries())}")


def _plan(args):
    from core.ablation import select
    from core.sweep import make_plan

    names, overrides = split_targets(args.targets)
    if is_rehearsal(args.preset):  # its JPEG folder first: run ids hold the dataset's fingerprint
        from core.rehearsal import ensure_data
        ensure_data(build_config(args.preset, overrides), lambda *a: None)
    return make_plan(select(names), args.preset, args.seeds, overrides), overrides


def cmd_run(args):
    from core.device import thread_count
    from core.distributed import from_env
    from core.parallel import run_plan_parallel
    from core.sweep import run_plan

    rehearsal = is_rehearsal(args.preset)
    if rehearsal and "RANK" not in os.environ:  # not yet under torchrun: launch it, then sum up
        return cmd_rehearse(args)
    if getattr(args, "nproc", None) is not None and not rehearsal:
        raise UserError("--nproc is for --rehearse (other runs: torchrun --nproc_per_node N run_all.py run ...)")
    plan, overrides = _plan(args)
    cfg = build_config(args.preset, overrides)
    main = os.environ.get("RANK", "0") == "0"
    log = print if main or not rehearsal else (lambda *a: None)
    prep = f"{len(plan.artifacts)} prepared artifact(s) (PCA basis, tokenizer) first, " if plan.artifacts else ""
    log(f"{prep}{len(plan.pretrains)} pretraining runs and {len(plan.evals)} evaluations for "
        f"{len({c.ablation for c in plan.cells})} ablations at preset {args.preset}; records in "
        f"{os.path.join(cfg.run.results_dir, 'runs')}")
    reasons = {}
    if rehearsal:
        from core.rehearsal import ensure_data, save_outcome
        ensure_data(cfg, log)  # already there when `run --rehearse` launched this torchrun
    jobs = getattr(args, "jobs", None) or 1
    if jobs > 1 and not rehearsal and from_env().world == 1:  # under torchrun: one DDP unit at a time
        log(f"{jobs} units at a time, {thread_count(jobs)} thread(s) each")
        status = run_plan_parallel(plan, jobs, log=log)
    else:
        status = run_plan(plan, progress=not args.quiet, log=log, keep_going=rehearsal, reasons=reasons)
    if rehearsal and main:
        save_outcome(cfg, status, reasons)
    failed = [rid for rid, st in status.items() if st != "done"]
    log(f"{len(status) - len(failed)} of {len(status)} runs done" +
        (f"; not done: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)


def cmd_rehearse(args):
    """`run --rehearse [--preset TIER]`: the paper plan at miniature size in ONE torchrun launch of `--nproc`
    processes (every unit in turn, a failed unit does not stop the others), then the rehearsal's
    tables, report and status, and a summary of every unit with the wall time."""
    from core.ablation import select
    from core.presets import TIER_OF
    from core.rehearsal import cell_keys, ensure_data, load_outcome, outcome_path, summary_lines
    from core.sweep import make_plan

    t0 = time.perf_counter()
    plan, overrides = _plan(args)
    # variants the tier itself cannot build (Figure 9's 24 blocks in ViT-B) are expected to be unavailable
    expected = cell_keys(make_plan(select(split_targets(args.targets)[0]), TIER_OF[args.preset], args.seeds, overrides))
    cfg = build_config(args.preset, overrides)
    ensure_data(cfg)
    if os.path.exists(outcome_path(cfg)):
        os.remove(outcome_path(cfg))  # a summary never shows an earlier rehearsal's outcome
    nproc = getattr(args, "nproc", None) or 2
    print(f"rehearsal: {len(plan.units)} units under torchrun --nproc_per_node {nproc}", flush=True)
    rc = subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                          os.path.join(ROOT, "run_all.py"), "run", "--preset", args.preset, "--quiet",
                          "--seeds", str(args.seeds), *args.targets])
    ns = argparse.Namespace(preset=args.preset, seeds=args.seeds, targets=args.targets, out=None, reconstruct=None)
    broken = []
    for step in (cmd_tables, cmd_report, cmd_status):  # each is part of what is rehearsed
        try:
            step(ns)
        except Exception as e:  # noqa: BLE001 - reported in the summary, the next step still runs
            broken.append(f"  {step.__name__[4:]} failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    lines, all_done = summary_lines(plan, cfg, load_outcome(cfg), time.perf_counter() - t0,
                                    f"torchrun x {nproc}" + (f" (exit code {rc})" if rc else ""), expected)
    print("\n" + "\n".join(lines + broken))
    if rc or broken or not all_done:
        raise SystemExit(1)


def cmd_status(args):
    from core.ablation import select
    from core.sweep import id_inputs

    plan, overrides = _plan(args)
    cfg = build_config(args.preset, overrides)
    hint = id_inputs(args.preset, overrides, select(split_targets(args.targets)[0]))
    if not getattr(args, "watch", None):  # `demo` calls this without the option
        print_status(plan, cfg, hint=hint)
        return
    try:  # until Ctrl-C, which is how a watch ends: exit 0
        while True:
            lines = []
            print_status(plan, cfg, out=lines.append, hint=hint)
            if sys.stdout.isatty():
                print("\033[H\033[2J", end="")  # clear the screen: each refresh replaces the last
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  every {args.watch:g} s, Ctrl-C to stop")
            print("\n".join(lines), flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        print()


def print_status(plan, cfg, out=print, hint=""):
    """Counts per ablation; each running unit's epoch, loss, speed and ETA; why units failed or did
    not run; the sweep's expected finish; the cluster jobs."""
    from core.cluster.status import status_lines, unit_jobs
    from core.progress import clock, duration
    from core.sweep import STATES, expected_finish, running_line, sweep_status, unit_statuses

    jobs, job_states = unit_jobs(plan, cfg)
    statuses = unit_statuses(plan, cfg.run.results_dir, jobs)
    rows = sweep_status(plan, cfg.run.results_dir, statuses=statuses)
    out(f"{'ablation':<18} " + " ".join(f"{s:>11}" for s in STATES) + f" {'unavailable':>11}")
    for r in rows:
        out(f"{r['ablation']:<18} " + " ".join(f"{r[s]:>11}" for s in STATES) + f" {r['unavailable']:>11}")
    for st in statuses.values():
        if st.state == "running":
            out(f"  running {running_line(st)}")
    for st in statuses.values():
        if st.state in ("failed", "cancelled", "not run", "preempted", "interrupted"):
            who = ", ".join(sorted({f"{a}/{v}" for a, v, _ in st.unit.users}))
            out(f"  {st.state} {st.unit.kind} {st.unit.run_id} ({who}): {st.reason or 'no reason recorded'}")
    for r in rows:
        for reason in r["unavailable_reasons"]:
            out(f"  unavailable {r['ablation']}/{reason}")
    if hint and rows and all(r["pending"] == sum(r[s] for s in STATES) for r in rows):
        out(f"  no unit of this sweep has a record yet. {hint}")  # perhaps other overrides made them
    finish = expected_finish(statuses)
    if finish and finish[0] == 0 and finish[1]:
        out(f"expected finish: not known until a unit has finished an epoch ({finish[1]} unit(s) to go)")
    elif finish:
        left, unknown = finish
        out(f"expected finish: {clock(left)[:19].replace('T', ' ')} UTC, in {duration(left)} (units one after "
            f"another, waiting ones at the mean time of finished ones)"
            + (f"; {unknown} unit(s) without an estimate yet" if unknown else ""))
    for line in status_lines(plan, cfg, job_states):  # SLURM states of the jobs `submit` started
        out(line)


def cmd_submit(args):
    from core.cluster.settings import flag_overrides
    from core.cluster.submit import submit

    names, overrides = split_targets(args.targets)
    submit(names, args.preset, args.seeds, overrides + flag_overrides(args), dry_run=args.dry_run)


def cmd_cancel(args):
    from core.cluster.status import cancel

    plan, overrides = _plan(args)
    cancel(split_targets(args.targets)[0], plan, build_config(args.preset, overrides))


def _results(args):
    """Every record of the sweep named by args (ablations, preset, overrides), over its seeds."""
    from core.report.collect import collect

    names, overrides = split_targets(getattr(args, "targets", []))
    return collect(args.preset, args.seeds, overrides, names)


def cmd_tables(args):
    from core.report.render import write_tables
    from core.report.report import run_counts
    from core.report.tables import build_tables

    res = _results(args)
    tables = build_tables(res)
    out = args.out or os.path.join(res.results_dir, "tables", args.preset)
    write_tables(tables, out)
    counts = run_counts(res)
    print(f"{len(tables)} tables (md, tex, csv) in {out}; runs of this sweep: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def cmd_plots(args):
    from core.report.tables import build_tables
    from plots.draw import draw_all
    from plots.style import DEFAULT_OUT

    res = _results(args)
    out = args.out or os.path.join(DEFAULT_OUT, args.preset)
    items = draw_all(res, build_tables(res), out, runs=args.reconstruct)
    print(f"{sum(1 for i in items if i['paths'])} figures (png, pdf) in {out}")


def cmd_compare(args):
    from core.report.collect import collect
    from core.report.compare import compare, to_markdown
    from core.report.render import _write

    res = collect(args.preset, args.seeds, args.overrides)
    text = to_markdown(compare(res, args.new, args.baseline, args.metric), args.preset)
    print(text, end="")
    if args.out:
        print(f"written to {_write(args.out, text)}")


def cmd_report(args):
    from core.report.report import report_dir, update_readme, write_report
    from core.report.tables import build_tables
    from plots.draw import draw_all

    res = _results(args)
    tables = build_tables(res)
    out = args.out or report_dir(res.results_dir, args.preset)
    figures = draw_all(res, tables, os.path.join(out, "figures"))
    print(f"report: {write_report(res, tables, figures, out, os.path.join(res.results_dir, 'tables', args.preset))}")
    if getattr(args, "readme", None):
        print(f"claims table written into {update_readme(args.readme, res, args.seeds)}")


def cmd_testbed(args):
    from core.report.testbed import check, markdown

    res = _results(args)
    out = check(res, args.seeds, split_targets(args.targets)[1])
    print(f"### Does pretraining learn? Preset {args.preset}, seeds 0 .. {args.seeds - 1}\n")
    print(markdown(res, out, args.seeds), end="")


def cmd_demo(args):
    """Every ablation at a small preset, then its tables, figures and report: what `make demo` runs."""
    from core.device import usable_cpus

    t0 = time.perf_counter()
    names, overrides = split_targets(args.overrides)
    # a CPU demo runs one single-thread unit per usable CPU: the workers overlap the many short
    # evaluations and the Figure 9 ladder; measured trade-offs in docs/performance.md ("The laptop grid")
    jobs = args.jobs or (usable_cpus() if build_config(args.preset, overrides).run.device == "cpu" else 1)
    ns = argparse.Namespace(preset=args.preset, seeds=args.seeds, targets=(names or ["all"]) + overrides,
                            quiet=args.quiet, out=None, reconstruct=None, jobs=jobs)
    failed = None
    try:
        cmd_run(ns)
    except SystemExit as e:  # some runs failed: still show what finished, then exit non-zero
        failed = e.code
    t_runs = time.perf_counter() - t0
    cmd_tables(ns)
    cmd_plots(ns)
    cmd_report(ns)
    cmd_status(ns)
    print(f"demo: {(time.perf_counter() - t0) / 60:.1f} min ({t_runs / 60:.1f} min of training and evaluation)")
    if failed:
        raise SystemExit(failed)


DEFAULT_PRESET = "tiny"


def resolve_preset(args) -> None:
    """`--preset` defaults to tiny, which trains on its built-in digits: a dataset path given without
    --preset, or a path the preset's dataset would ignore, is refused instead of silently unused."""
    if not hasattr(args, "preset"):
        return
    if getattr(args, "rehearse", False):  # the rehearsal of the paper or of a tier (core/presets.py REHEARSAL_OF)
        tier = args.preset or "paper"
        if tier not in REHEARSAL_OF and not is_rehearsal(tier):
            raise ConfigError(f"--rehearse --preset {tier}: preset {tier} has no rehearsal; presets with one: "
                              f"{', '.join(REHEARSAL_OF)}")
        args.preset = REHEARSAL_OF.get(tier, tier)
    words = config_words(args)
    given = {w.split("=", 1)[0].strip(): w.split("=", 1)[1].strip() for w in words}
    if args.preset is None:
        if given.get("data.path") or given.get("data.dataset", "").strip("'\"") == "imagefolder":
            raise ConfigError("a dataset folder is given but no preset: the default preset tiny trains a tiny model "
                              "on its built-in digits; pass --preset paper (ViT-L/16 on that folder), or --preset tiny "
                              "data.dataset=imagefolder for the tiny model on it")
        args.preset = DEFAULT_PRESET
    if given.get("data.path"):
        if args.preset not in PRESETS:
            return  # build_config names the unknown preset
        given_data = dict(parse_override(w) for w in words if w.split("=", 1)[0].strip().startswith("data."))
        data = apply_overrides(Config(), {**PRESETS[args.preset], **given_data}).data  # types only: the run checks ranges
        if data.dataset != "imagefolder":
            raise ConfigError(f"data.path={data.path} would be ignored: preset {args.preset} trains on "
                              f"data.dataset={data.dataset}; "
                              + ("pass --preset paper for ImageNet, or " if args.preset == DEFAULT_PRESET else "")
                              + "set data.dataset=imagefolder to train on that folder")


# ------------------------------------------------------------------ preflight
# Bad input is refused before a command writes anything (a record, a lock, a figure): main() passes
# every command's arguments through preflight() before the command runs. A command with a preset
# builds its config from the preset and key=value words (an unknown preset or key: one line, exit 2,
# in every command); then the checks it declares with set_defaults(checks=...) look at what can be
# known without running: files it will read, run ids it names, batches against known dataset sizes.

def config_words(args) -> list[str]:
    """The key=value words of a command (some commands mix them with ablation names)."""
    return [w for name in ("overrides", "targets") for w in getattr(args, name, None) or [] if "=" in w]


def preflight(args) -> None:
    if not hasattr(args, "preset"):
        return  # no config (data beton checks its own paths before writing)
    cfg = build_config(args.preset, config_words(args))
    for check in getattr(args, "checks", ()):
        check(args, cfg)


def check_dataset(args, cfg):
    from core.data import check_dataset_path

    check_dataset_path(cfg.data)


def check_dvae(args, cfg):
    """DALL-E's encoder file loads with the safe loader (a sweep's target ablation may use it)."""
    from core.targets.dalle import check_dvae_path

    check_dvae_path(cfg.model.dvae_path)


def check_one_encoder(args, cfg):
    from core.eval import check_one_encoder

    check_one_encoder(getattr(args, "run", None), getattr(args, "init", None), getattr(args, "baseline", None))


def check_probe_batch(args, cfg):
    """The linear probe's batch against the dataset's known size (the config checks the other batches)."""
    from core.config import check_batches

    if args.protocol == "linprobe":
        check_batches(cfg, ("eval.linprobe.batch_size",))


def check_cluster_flags(args, cfg):
    from core.cluster.settings import flag_overrides

    build_config(args.preset, config_words(args) + flag_overrides(args))


def check_run_ids(option: str):
    """The pretraining runs named by `option` (one id or a list) have a finished record."""
    def check(args, cfg):
        from core.results import pretrain_record

        ids = getattr(args, option, None) or []
        for run_id in [ids] if isinstance(ids, str) else ids:
            pretrain_record(cfg.run.results_dir, run_id)
    return check


def add_preset_args(p: argparse.ArgumentParser):
    """--preset, and --rehearse: that preset's plan at miniature size (core/rehearsal.py)."""
    p.add_argument("--preset", help="config preset (default tiny; with --rehearse: paper)")
    p.add_argument("--rehearse", action="store_true", help="rehearse the preset's sweep at miniature size "
                   f"(paper and the tiers {', '.join(list(REHEARSAL_OF)[1:])}; --rehearse alone = --preset rehearsal; "
                   "README)")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


JOBS_HELP = ("units run at once, each in its own process with its share of the CPUs this process may use "
             "(affinity, SLURM_CPUS_PER_TASK); evaluations wait for their pretraining. Default 1 for `run`; `demo` "
             "on the CPU: one worker per usable CPU, one thread each (docs/performance.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="run_all.py", description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", metavar="PATHS", help="your own ablations, mask strategies, targets and encoders: "
                        "folders, .py files or module names, separated by ':' (added to MAE_PLUGINS, which every "
                        "process of a run inherits; docs/extending.md)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("pretrain", help="pretrain one MAE run")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=cmd_pretrain, checks=(check_dataset, check_dvae))

    p = sub.add_parser("config", help="print the resolved configuration: each key's value, one-line description, "
                       "allowed range and, for recipe keys, the paper table it comes from")
    add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("tokenizer", help="train (or find) the dvae_token target's tokenizer (docs/targets.md)")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=cmd_tokenizer, checks=(check_dataset,))

    p = sub.add_parser("data", help="datasets: FFCV .beton files (docs/ffcv.md); the tiers' ImageNet-100 and CIFAR "
                       "folders (docs/tiers.md)")
    tools = p.add_subparsers(dest="tool", required=True, parser_class=Parser, metavar="TOOL")
    q = tools.add_parser("beton", help="convert an ImageFolder (SRC/train, SRC/val -> OUT/train.beton, "
                         "OUT/val.beton; or one class-folder tree -> OUT.beton)")
    q.add_argument("src", metavar="SRC_DIR")
    q.add_argument("out", metavar="OUT", help="a folder, or a file ending in .beton")
    q.add_argument("--max-res", type=positive_int, default=256, help="longer side cap in pixels (default 256)")
    q.add_argument("--jpeg-quality", type=positive_int, default=90, help="JPEG quality 1-100 (default 90)")
    q.add_argument("--compress-prob", type=float, default=0.5, help="fraction stored as JPEG, the rest raw (0.5)")
    q.add_argument("--workers", type=positive_int, default=None, help="writer processes (default: all cores)")
    q.add_argument("--on-corrupt", choices=("skip", "error"), default="skip",
                   help="an unreadable image: skip it (listed in OUT.json) or stop naming it")
    q.set_defaults(func=cmd_data_beton)
    q = tools.add_parser("imagenet100", help="the in100_vits tier's data: an ImageFolder of symlinks to the 100 "
                         "classes of core/imagenet100_classes.txt in your ImageNet (docs/tiers.md)")
    q.add_argument("--imagenet", required=True, metavar="DIR", help="ImageNet with train/<wnid>/ and val/<wnid>/")
    q.add_argument("--out", required=True, metavar="DIR", help="the folder to create (must not exist)")
    q.set_defaults(func=cmd_data_tier)
    for kind in ("cifar10", "cifar100"):
        q = tools.add_parser(kind, help=f"the cifar_vitt tier's data: {kind} as an ImageFolder of PNG files from "
                             f"the official {kind.replace('cifar', 'cifar-')}-python.tar.gz")
        q.add_argument("--tarball", required=True, metavar="FILE", help="the official python-version tarball")
        q.add_argument("--out", required=True, metavar="DIR", help="the folder to create (must not exist)")
        q.set_defaults(func=cmd_data_tier)

    p = sub.add_parser("eval", help="evaluate a pretraining run (or a checkpoint file); or train the scratch baseline")
    protocols = p.add_subparsers(dest="protocol", required=True, parser_class=Parser, metavar="PROTOCOL")
    for name, text in (("linprobe", "linear probe on frozen features"), ("finetune", "end-to-end fine-tuning"),
                       ("partial", "fine-tune the last eval.finetune.blocks blocks"),
                       ("knn", "k-nearest-neighbour classification on frozen features"),
                       ("scratch", "the supervised baseline from random initialisation")):
        q = protocols.add_parser(name, help=text)
        if name != "scratch":
            q.add_argument("--run", metavar="RUN_ID", help="pretraining run id (default: the run the config describes)")
            q.add_argument("--init", metavar="PATH", help="a checkpoint in the official MAE layout instead of a run")
        if name in ("linprobe", "knn"):
            q.add_argument("--baseline", choices=("pixels", "random"),
                           help="a reference instead of an encoder: the raw pixels, or the encoder pretraining run "
                                "pretrain.seed starts from, never trained (docs/evaluation.md)")
        if name == "finetune":
            q.add_argument("--eval-only", action="store_true",
                           help="evaluate the fine-tuned classifier given by --init on the validation split, no training")
        add_config_args(q)
        q.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
        q.set_defaults(func=cmd_eval, checks=(check_one_encoder, check_dataset, check_probe_batch,
                                            check_run_ids("run")))

    p = sub.add_parser("demo", help="run every ablation (or those named) at a small preset, then write tables, "
                       "figures and the report")
    p.add_argument("--preset", help="config preset (default tiny)")
    p.add_argument("overrides", nargs="*", metavar="ABLATION|key=value")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per variant (0 .. N-1; default 3: the claims "
                   "table needs 2 for any verdict; --seeds 1 for a quick look)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("--jobs", type=positive_int, help=JOBS_HELP)
    p.set_defaults(func=cmd_demo, checks=(check_dvae,))

    p = sub.add_parser("list", help="list the ablations with their paper source and variant counts")
    p.add_argument("--preset", help="config preset (default tiny)")
    p.set_defaults(func=cmd_list)

    for name, func, text in (("run", cmd_run, "run ablation sweeps locally: pretraining, then evaluations"),
                             ("status", cmd_status, "per ablation: runs done, running, failed, pending")):
        p = sub.add_parser(name, help=text)
        add_preset_args(p)
        p.add_argument("--seeds", type=positive_int, default=1, help="seeds per variant (0 .. N-1)")
        p.add_argument("targets", nargs="*", metavar="ABLATION|all|key=value")
        if name == "run":
            p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
            p.add_argument("--jobs", type=positive_int, help=JOBS_HELP)
            p.add_argument("--nproc", type=positive_int, help="--rehearse: torchrun processes (default 2)")
        else:
            p.add_argument("--watch", nargs="?", type=positive_float, const=10.0, default=None, metavar="SECONDS",
                           help="refresh every SECONDS (default 10) until Ctrl-C")
        p.set_defaults(func=func, checks=(check_dvae,) if name == "run" else ())

    p = sub.add_parser("submit", help="submit ablation sweeps as cluster job arrays (docs/cluster.md)")
    add_preset_args(p)
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds per variant (0 .. N-1)")
    p.add_argument("targets", nargs="*", metavar="ABLATION|all|key=value")
    p.add_argument("--cluster", choices=("auto", "slurm", "local", "debug"),
                   help="auto: slurm when sbatch is on PATH, else local processes")
    p.add_argument("--dry-run", action="store_true", help="print every job, its sbatch settings and GPU-hours; "
                   "submit nothing")
    for flag in ("partition", "account", "qos", "constraint", "mem", "time", "job-dir"):
        p.add_argument(f"--{flag}", help=f"cluster.{flag.replace('-', '_')}")
    for flag in ("nodes", "gpus-per-node", "tasks-per-node", "cpus-per-task", "array-parallelism", "signal-delay"):
        p.add_argument(f"--{flag}", type=int, help="cluster." + flag.replace("-", "_").replace("delay", "delay_s"))
    p.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="any other sbatch option (repeatable)")
    p.set_defaults(func=cmd_submit, checks=(check_cluster_flags,))

    p = sub.add_parser("cancel", help="cancel the cluster jobs of ablations (or all)")
    add_preset_args(p)
    p.add_argument("--seeds", type=positive_int, default=1)
    p.add_argument("targets", nargs="*", metavar="ABLATION|all|key=value")
    p.set_defaults(func=cmd_cancel)

    for name, func, text in (("tables", cmd_tables, "the paper's tables and figure data, ours joined with the paper's "
                              "(results/tables/<preset>/)"),
                             ("plots", cmd_plots, "figures: curves, Table 2, loss curves, reconstructions, masks "
                              "(plots/out/<preset>/)"),
                             ("report", cmd_report, "one Markdown report with every table and figure "
                              "(results/report/<preset>/report.md)")):
        p = sub.add_parser(name, help=text)
        add_preset_args(p)
        p.add_argument("--seeds", type=positive_int, default=1,
                       help="expect seeds 0 .. N-1 (more are shown once their records exist)")
        p.add_argument("--out", help="output folder")
        p.add_argument("targets", nargs="*", metavar="ABLATION|all|key=value")
        if name == "report":
            p.add_argument("--readme", metavar="PATH", help="also regenerate the claims block of this README "
                           "(between <!-- claims:begin --> and <!-- claims:end -->)")
        if name == "plots":
            p.add_argument("--reconstruct", action="append", metavar="RUN_ID",
                           help="pretraining run to reconstruct images with (repeatable; default: the target "
                                "ablation's finished runs)")
            p.set_defaults(checks=(check_run_ids("reconstruct"),))
        p.set_defaults(func=func)

    p = sub.add_parser("testbed", help="does pretraining learn? From the records: raw pixels, random weights and MAE "
                       "on linear probe, fine-tune and kNN, MAE's gains with intervals, and the claims table's "
                       "median interval half-width (docs/evaluation.md)")
    add_preset_args(p)
    p.add_argument("--seeds", type=positive_int, default=3, help="expect seeds 0 .. N-1 (default 3)")
    p.add_argument("targets", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_testbed)

    p = sub.add_parser("compare", help="a new ablation, variant or run against a baseline: deltas, seed spread, "
                       "a paired or Welch's t-test and interval")
    p.add_argument("new", metavar="NEW", help="ablation, ablation/variant or run id")
    p.add_argument("--baseline", metavar="BASE", help="ablation (its baseline variant), ablation/variant or run id; "
                   "default: NEW's own ablation baseline")
    p.add_argument("--preset", help="config preset (default tiny)")
    p.add_argument("--seeds", type=positive_int, default=1)
    p.add_argument("--metric", action="append", help="only this metric (repeatable), e.g. linprobe_top1")
    p.add_argument("--out", help="also write the Markdown table to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling positionals at the first option: `compare X --baseline Y key=value`
    # leaves key=value over; such words join the command's overrides, anything else is an error
    spill = next((n for n in ("overrides", "targets") if isinstance(getattr(args, n, None), list)), None)
    if extra and (spill is None or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, spill).extend(extra)
    from core.device import configure_threads
    from core.distributed import shutdown

    # the processes torchrun started on this node split its CPUs; --jobs workers set their own share
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    configure_threads(int(local) if local.isdigit() and int(local) > 0 else 1)
    if args.plugins:  # through the environment: torchrun ranks, --jobs workers and cluster jobs load them too
        from core.registry import PLUGINS_ENV
        os.environ[PLUGINS_ENV] = os.pathsep.join(p for p in (args.plugins, os.environ.get(PLUGINS_ENV)) if p)
    try:
        resolve_preset(args)
        preflight(args)
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingFailed as e:
        print(f"failed: {e}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()  # torchrun launches: every rank leaves the process group before exiting
    return 0


if __name__ == "__main__":
    sys.exit(main())
