"""`python -m training {synth,fit} ...`: the offline command line.

Bad input exits non-zero with one line on stderr naming the file, field, value and fix.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recsys.data import load_log
from recsys.errors import RecsysError
from training import synth


def _fit(args: argparse.Namespace) -> int:
    from training.pipeline import train_and_export

    clog = load_log(args.log, args.items, args.users)
    overrides = list(args.set or [])
    if args.quiet:
        overrides.append("train.progress=false")
    report = train_and_export(clog, Path(args.out), overrides, Path(args.run_dir), resume=args.resume)
    print(f"artifact: {report.artifact}")
    print(f"best epoch {report.fit.best_epoch} of {len(report.fit.history)}, {report.fit.seconds:.1f} s")
    print("test (leave-one-out; next item: full ranking, seen excluded; bst: AUC vs 1 sampled negative):")
    print(json.dumps(report.test, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    synth.add_cli(sub)
    fit = sub.add_parser("fit", help="train a BST on a click log and export a versioned artifact")
    fit.add_argument("--log", required=True, help="click log, CSV or Parquet (canonical schema, see README)")
    fit.add_argument("--items", help="optional item table: item_id + categorical columns")
    fit.add_argument("--users", help="optional user table: user_id + profile columns")
    fit.add_argument("--out", required=True, help="artifact root; the new version is written under it")
    fit.add_argument("--run-dir", default="runs/fit", help="checkpoints, metrics.jsonl, learning_curve.png")
    fit.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config field, e.g. model.n_blocks=2 or train.epochs=5 (repeatable)",
    )
    fit.add_argument("--resume", action="store_true", help="resume from the run dir's checkpoint")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(func=_fit)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
