#!/usr/bin/env python
"""The suite's command line: pretrain, evaluate, run ablation sweeps, regenerate tables and plots.

    python run_all.py pretrain --preset tiny pretrain.epochs=5 model.mask_ratio=0.5

Every subcommand takes a preset and `key=value` overrides of core/config.py. Bad input gets one
line naming the problem and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        print(f"error: {message} (see: python run_all.py {self.prog.split()[-1]} --help)"
              if " " in self.prog else f"error: {message}", file=sys.stderr)
        sys.exit(2)


def add_config_args(p: argparse.ArgumentParser):
    p.add_argument("--preset", default="tiny", help="config preset (tiny, paper, ...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. pretrain.epochs=5")


def cmd_pretrain(args):
    from core.config import build_config
    from core.train import ckpt_dir, pretrain

    cfg = build_config(args.preset, args.overrides)
    rec = pretrain(cfg, progress=not args.quiet)
    m = rec.get("metrics", {})
    print(f"run {rec['run_id']}: {rec['status']}, loss {m.get('first_loss', float('nan')):.4f} -> "
          f"{m.get('final_loss', float('nan')):.4f}, {rec.get('wall_time_s', 0):.1f} s")
    print(f"record: {os.path.join(cfg.run.results_dir, 'runs', rec['run_id'] + '.json')}")
    print(f"checkpoint: {rec.get('last_checkpoint') or ckpt_dir(cfg)}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="run_all.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("pretrain", help="pretrain one MAE run")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from core.errors import Preempted, TrainingFailed, UserError

    try:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
