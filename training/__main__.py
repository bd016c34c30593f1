"""`python -m training {synth,fit,retrain,export-events,registry} ...`: the offline command line.

Bad input exits non-zero with one line on stderr naming the file, field, value and fix.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from recsys.data import load_log, release_freed_memory
from recsys.errors import RecsysError

# subcommand -> the module that defines it (`add_cli`); only the one asked for is imported, so a
# `synth` or a bad `fit` does not pay for torch and scikit-learn (about 2 s a call)
COMMANDS = {
    "synth": "training.synth",
    "export-events": "training.export_events",
    "registry": "training.registry",
    "retrain": "training.retrain",
}


def _fit(args: argparse.Namespace) -> int:
    from recsys.errors import InvalidArgument
    from training.datasets import load_dataset

    if (args.log is None) == (args.dataset is None):
        given = "both were given" if args.log else "neither was given"
        raise InvalidArgument(f"fit reads --log FILE or --dataset NAME, {given}; fix: pass exactly one")
    if args.dataset is None:
        for flag in ("path", "attributes", "min_rating"):
            if getattr(args, flag) is not None:
                option = "--" + flag.replace("_", "-")
                raise InvalidArgument(f"{option} goes with --dataset, not --log; fix: drop it or use --dataset")
        clog = load_log(args.log, args.items, args.users)
    else:
        if args.items or args.users:
            raise InvalidArgument("--items/--users go with --log; fix: drop them (the dataset adapter reads its own)")
        if args.path is None:
            raise InvalidArgument(f"--dataset {args.dataset} needs --path; fix: add --path DIR_OR_FILE")
        options = {} if args.min_rating is None else {"min_rating": args.min_rating}
        clog, adapted = load_dataset(args.dataset, args.path, args.attributes, **options)
        print(adapted.line())
    from training.pipeline import export_trained, prepare  # after loading: bad data fails without importing torch

    overrides = list(args.set or [])
    if args.quiet:
        overrides.append("train.progress=false")
    init_distributed()
    prep = prepare(clog, overrides)
    del clog  # training needs only the encoded arrays: the canonical frame can go now
    release_freed_memory()  # and the memory Arrow's pool kept of it (README, Large logs)
    report = export_trained(prep, Path(args.out), Path(args.run_dir), resume=args.resume)
    if report is None:  # a torchrun rank other than 0: rank 0 exports and reports
        return 0
    print(f"artifact: {report.artifact}")
    print(f"best epoch {report.fit.best_epoch} of {len(report.fit.history)}, {report.fit.seconds:.1f} s")
    print("test (leave-one-out; next item: full ranking, seen excluded; bst: AUC vs 1 sampled negative):")
    print(json.dumps(report.test, indent=1))
    return 0


def init_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group and split the machine's cores between the
    local ranks, so they do not oversubscribe them. CPU tensors go through gloo; where torch sees GPUs,
    CUDA tensors (`train.device=cuda`: the gradients) through NCCL, each rank on GPU LOCAL_RANK."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # torchrun's agent keeps one key-value store across restarts (--max-restarts): the previous round's
        # rank addresses are still in it, and a restarted rank that reads one connects to a dead process
        # ("Gloo connectFullMesh failed ... Connection refused"; pytorch/pytorch#167288). A prefix per
        # restart gives each round fresh keys.
        rank, restart = int(os.environ["RANK"]), os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=rank == 0 and not agent_store
        )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "gloo"
        if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"  # the budget flags stay CPU tensors, the gradients go over NCCL
        dist.init_process_group(
            backend, store=dist.PrefixStore(f"recsys/round{restart}", store), rank=rank, world_size=world
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)  # the only top-level option is a flag
    for name, module in COMMANDS.items():
        if chosen == name or (chosen not in COMMANDS and chosen != "fit"):  # none or unknown: all, for the usage
            importlib.import_module(module).add_cli(sub)
    fit = sub.add_parser("fit", help="train a BST on a click log and export a versioned artifact")
    # exactly one of --log and --dataset: checked in _fit, so the error is one line with its fix
    fit.add_argument("--log", help="click log, CSV or Parquet (canonical schema, see README)")
    fit.add_argument(
        "--dataset",
        metavar="NAME",
        help="a public log read from --path by training/datasets.py: ml-100k, ml-latest-small, ml-1m, "
        "movielens (detects which), amazon, taobao",
    )
    fit.add_argument("--path", help="with --dataset: the dataset's directory (MovieLens) or file")
    fit.add_argument("--attributes", help="with --dataset amazon: the item2attributes.json")
    fit.add_argument(
        "--min-rating", type=float, help="with a MovieLens --dataset: drop lower ratings (ml-1m default 4)"
    )
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
