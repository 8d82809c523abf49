"""Criterion 2 of issue 24 under both intervals: the median 95 % half-width over the claims table's
contrasts with the report's rule (paired t where every term has the same seeds) and with Welch's
interval over the same records (docs/testbed.md, "Paired seeds as a lever").

python bench/interval_power.py --preset tiny --seeds 3 [key=value ...]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

from core.report import claims
from core.report.collect import collect


def halfwidths(res, paired: bool):
    found = claims.CLAIMS
    if not paired:  # every comparison as independent groups
        claims.CLAIMS = tuple(dataclasses.replace(c, comparisons=tuple(dataclasses.replace(x, paired=False)
                                                                         for x in c.comparisons)) for c in found)
    try:
        df = claims.evaluate_claims(res)
    finally:
        claims.CLAIMS = found
    return [h for row in df.halfwidths for h in row], list(df.verdict)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    res = collect(args.preset, args.seeds, args.overrides)
    for name, paired in (("the report's rule (paired where valid)", True), ("Welch everywhere", False)):
        hs, verdicts = halfwidths(res, paired)
        if not hs:
            print(f"{name}: no contrast has an interval yet (run the sweep first)")
            continue
        print(f"{name}: median 95 % half-width {statistics.median(hs):.2f} points over {len(hs)} contrasts "
              f"(range {min(hs):.2f} .. {max(hs):.2f}); verdicts: {', '.join(verdicts)}")


if __name__ == "__main__":
    main()
