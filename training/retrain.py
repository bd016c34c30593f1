"""`python -m training retrain`: the next version, warm-started from the live one, gated, promoted.

    python -m training retrain --from artifacts --log events.parquet --out artifacts [--window 30]

1. Data: the new batch (a file, or a directory of date-partitioned Parquet such as `export-events`
   writes) plus recent history: `--history PATH` when given, else the users' recent histories that
   the previous artifact ships (its seed), either cut to the `--window` days before the batch's newest
   event. Both go through the same validation as `fit`.
2. Warm start: the vocabularies grow (`Featurizer.build(base=...)`: old indices unchanged, new ids
   appended), the model is rebuilt with the previous model's config at the grown sizes, every old
   weight is copied and new embedding rows start as in a fresh model. A frozen grown model scores old
   items exactly as before (a test holds this).
3. Holdout: the newest `gate.holdout` share of the batch's clicks (a global time split), which neither
   the previous model nor the candidate trains on. The candidate trains on everything before it, with
   each user's last click before it as validation for early stopping.
4. Gate: the candidate and the live model serve the holdout through the exported artifact (`served`:
   retrieval, BST, seen excluded, top 10) and the candidate is promoted only if none of the gate's
   metrics drops by more than `gate.tolerance`. Both sets of metrics and the decision go into the new
   manifest.
5. Crash safety: the version is written and evaluated under `ROOT/.staging/` and renamed into ROOT
   only when complete, then LATEST moves (temp file + rename). A retrain killed at any point leaves
   ROOT as it was (at most a stale `.staging/` entry, cleared by the next run); re-running does the job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys import artifact
from recsys.batch import Featurizer
from recsys.config import apply_overrides, check_prefixes, to_dict
from recsys.data import ClickLog, load_log, release_freed_memory
from recsys.errors import InvalidArgument
from recsys.index import IndexConfig
from recsys.model import BST
from recsys.recommender import Recommender
from training.dataset import EncodedLog, Split, time_split
from training.evaluate import rank_metrics, served_ranks, user_vectors
from training.pipeline import SEED_HISTORY, choose_serving_depth, popular_list
from training.trainer import TrainConfig, fit

log = logging.getLogger(__name__)

STAGING = ".staging"
REFUSED_EXIT = 3  # the gate kept the live version: a scheduler should notice, not retry


@dataclass(frozen=True)
class GateConfig:
    metrics: tuple[str, ...] = ("ndcg@10", "hr@10")  # served metrics on the holdout, higher is better
    tolerance: float = 0.0  # the largest drop (absolute) allowed on each metric
    holdout: float = 0.1  # newest share of the new batch's clicks held out for the gate
    max_examples: int = 5000  # holdout clicks evaluated (a fixed random subset when more)
    seed: int = 0


@dataclass
class RetrainReport:
    version: str
    path: Path
    promoted: bool
    gate: dict[str, Any]


# -- data -------------------------------------------------------------------------------------------


def seed_log(base: artifact.Artifact) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The previous artifact's shipped histories as click rows, and its users' profiles as a table."""
    seed = artifact.read_seed(base.path)
    rows = seed.explode(["items", "timestamps", "events"]).dropna(subset=["items"])
    events = pd.DataFrame(
        {
            "user_id": rows["user_id"].astype(str),
            "item_id": rows["items"].astype(str),
            "timestamp": rows["timestamps"].astype(np.int64),
            "event": rows["events"].astype(str),
            "label": 1,
        }
    )
    columns = base.featurizer.user_columns
    if not columns:
        return events, None
    profiles = [json.loads(p) for p in seed["profile"]]
    users = pd.DataFrame({"user_id": seed["user_id"].astype(str)})
    for col in columns:
        users[col] = [p.get(col, "") for p in profiles]
    return events, users


def combine(new: ClickLog, history: pd.DataFrame, users: pd.DataFrame | None, window_days: float) -> ClickLog:
    """The new batch plus the history rows of the `window_days` before its newest event (none for 0;
    duplicates of the same click dropped); the batch's user table wins over the history's profiles."""
    ev = new.events
    if window_days <= 0:
        history = history.iloc[:0]
    elif new.has_time:
        history = history[history["timestamp"] >= int(ev["timestamp"].max() - window_days * 86_400)]
    both = pd.concat([history[ev.columns.intersection(history.columns)], ev], ignore_index=True)
    both = both.drop_duplicates(subset=["user_id", "item_id", "timestamp", "event", "label"], keep="last")
    both = both.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    if users is not None and new.users is not None:
        users = pd.concat([users[~users["user_id"].isin(new.users["user_id"])], new.users], ignore_index=True)
    elif new.users is not None:
        users = new.users
    return ClickLog(both, new.items, users, new.has_time, source=f"{new.source} + history")


# -- warm start -------------------------------------------------------------------------------------


def grow(old: BST, feats: Featurizer) -> BST:
    """A model at `feats`' (grown) sizes with every weight of `old`: tensors of the same shape copied,
    embedding tables copied into their first rows (new rows keep their fresh initialisation)."""
    cfg = dataclasses.replace(old.cfg, **feats.model_sizes())
    model = BST(cfg)
    state = model.state_dict()
    for name, value in old.state_dict().items():
        target = state[name]
        if target.shape == value.shape:
            target.copy_(value)
        elif target.dim() == value.dim() and target.shape[1:] == value.shape[1:] and target.shape[0] >= value.shape[0]:
            target[: value.shape[0]].copy_(value)
        else:
            raise InvalidArgument(f"cannot warm-start {name}: {tuple(value.shape)} -> {tuple(target.shape)}")
    model.load_state_dict(state)
    model.load_state_dict(feats.side_buffers(), strict=False)
    return model


# -- the gate ---------------------------------------------------------------------------------------


def gate_examples(split: Split, cfg: GateConfig) -> Any:
    test = split.test
    if len(test) > cfg.max_examples:
        rng = np.random.default_rng(cfg.seed)
        test = test.subset(np.sort(rng.choice(len(test), cfg.max_examples, replace=False)))
    return test


def decide(candidate: dict[str, float], live: dict[str, float], cfg: GateConfig) -> tuple[bool, str]:
    drops = {m: live[m] - candidate[m] for m in cfg.metrics}
    worse = {m: d for m, d in drops.items() if d > cfg.tolerance}
    if worse:
        why = ", ".join(f"{m} {candidate[m]:.4f} < live {live[m]:.4f}" for m in worse)
        return False, f"refused: {why} (tolerance {cfg.tolerance})"
    return True, "promoted: " + ", ".join(f"{m} {candidate[m]:.4f} vs live {live[m]:.4f}" for m in cfg.metrics)


# -- the job ----------------------------------------------------------------------------------------


def retrain(
    base_path: str | Path,
    new: ClickLog,
    out: str | Path,
    *,
    history: ClickLog | None = None,
    window_days: float = 30.0,
    overrides: list[str] | None = None,
    gate: GateConfig = GateConfig(),
    run_dir: Path | None = None,
) -> RetrainReport:
    check_prefixes(overrides or [], ("train", "index"))
    train_cfg = apply_overrides(TrainConfig(), overrides or [], "train")
    if train_cfg.refit:  # never silently ignored: the gate's holdout design has no refit step (yet)
        raise InvalidArgument(
            "train.refit=true: retrain does not refit (its candidate trains on everything before the gate's "
            "holdout, with each user's last click before it for early stopping); fix: drop --set train.refit"
        )
    index_cfg = apply_overrides(IndexConfig(), overrides or [], "index")  # an unknown key fails before training
    root = Path(out)
    base = artifact.load(base_path)
    if history is not None:
        hist_events, hist_users = history.events, history.users
    else:
        hist_events, hist_users = seed_log(base)
    clog = combine(new, hist_events, hist_users, window_days)
    feats = Featurizer.build(clog, base.featurizer.window_len, base.featurizer.n_positions, base=base.featurizer)
    torch.manual_seed(train_cfg.seed)
    model = grow(base.model, feats)
    data = EncodedLog.build(clog, feats)
    summary, new_summary = clog.summary(), new.summary()
    del clog, hist_events, hist_users  # the combined frame is encoded: free it before training
    release_freed_memory()
    cutoff = holdout_cutoff(new, gate.holdout)
    split = time_split(data, cutoff)
    if len(split.train) == 0 or len(split.valid) == 0 or len(split.test) == 0:
        raise InvalidArgument(
            f"{new.source}: too little data around the holdout cutoff {cutoff} (train {len(split.train)}, "
            f"validation {len(split.valid)}, holdout {len(split.test)}); fix: pass a larger batch or change --holdout"
        )
    log.info(
        "retrain from %s: %d items (+%d), %d training examples, %d holdout clicks",
        base.version,
        len(feats.items) - 2,
        len(feats.items) - len(base.featurizer.items),
        len(split.train),
        len(split.test),
    )
    t0 = time.monotonic()
    result = fit(model, data, split, train_cfg, run_dir or root / STAGING / "run")
    staging = root / STAGING
    shutil.rmtree(staging / "versions", ignore_errors=True)  # a killed run's leftovers
    version = artifact.new_version()
    path = artifact.save(
        staging / "versions",
        model,
        feats,
        popular_list(split.popularity),
        data.seed_table(SEED_HISTORY),
        {**summary, "split": "time", "holdout_from": int(cutoff), "train_examples": len(split.train)},
        {f"valid_{k}": v for k, v in result.best_metrics.items()},
        version=version,
        make_latest=False,
        index_config=index_cfg,
        queries=user_vectors(model, data, split.valid, index_cfg.recall_queries),
        extra={
            "train_config": to_dict(train_cfg),
            "train_seconds": round(time.monotonic() - t0, 1),
            "retrain": {"from": base.version, "new_batch": new_summary, "window_days": window_days},
        },
    )
    choose_serving_depth(path, data, split.valid, train_cfg)
    held = gate_examples(split, gate)
    scores = {
        "candidate": rank_metrics(served_ranks(Recommender.load(path), data, held)),
        "live": rank_metrics(served_ranks(Recommender(base), data, held)),
    }
    promoted, reason = decide(scores["candidate"], scores["live"], gate)
    decision = {
        "promoted": promoted,
        "reason": reason,
        "against": base.version,
        "protocol": "served top 10 (retrieval, BST, seen excluded) on the newest clicks of the new batch",
        "config": to_dict(gate),
        **scores,
    }
    artifact.update_manifest(path, {"gate": decision})
    final = root / version
    os.replace(path, final)  # complete and gated: now visible in the registry
    if promoted:
        artifact.set_latest(root, version)
    log.info("%s %s", version, reason)
    return RetrainReport(version, final, promoted, decision)


def holdout_cutoff(new: ClickLog, share: float) -> float:
    """The time from which the newest `share` of the batch's clicks are held out."""
    if not 0 < share < 1:
        raise InvalidArgument(f"--holdout={share} is out of range; fix: pass a share between 0 and 1, e.g. 0.1")
    if not new.has_time:
        raise InvalidArgument(f"{new.source}: the batch has no timestamps; fix: retrain needs a timestamp column")
    clicks = new.events.loc[new.events["label"] == 1, "timestamp"].to_numpy()
    return float(np.quantile(clicks, 1 - share, method="higher"))


def add_cli(sub: Any) -> None:
    p = sub.add_parser("retrain", help="warm-start the next version on a new batch, gate it, promote it")
    p.add_argument("--from", dest="base", required=True, help="the live artifact (a version dir, or a root)")
    p.add_argument("--log", required=True, help="the new batch: CSV, Parquet, or a directory of Parquet files")
    p.add_argument("--items", help="optional item table for new items (same columns as the model's)")
    p.add_argument("--users", help="optional user table (same columns as the model's)")
    p.add_argument("--history", help="older click log to train on beside the batch (default: the artifact's seed)")
    p.add_argument("--window", type=float, default=30.0, help="days of history before the batch (0 = none)")
    p.add_argument("--out", required=True, help="artifact root: the version is written here, LATEST moved")
    p.add_argument("--run-dir", help="checkpoints and metrics (default: ROOT/.staging/run)")
    p.add_argument("--holdout", type=float, default=GateConfig.holdout, help="newest share held out for the gate")
    p.add_argument("--tolerance", type=float, default=GateConfig.tolerance, help="largest allowed metric drop")
    p.add_argument("--gate-metrics", default=",".join(GateConfig.metrics), help="served metrics the gate compares")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="train.* / index.*")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    new = load_log(args.log, args.items, args.users)
    history = load_log(args.history) if args.history else None
    metrics = tuple(m for m in args.gate_metrics.split(",") if m)
    known = ("hr@10", "ndcg@10")
    if not metrics or any(m not in known for m in metrics):
        raise InvalidArgument(f"--gate-metrics={args.gate_metrics!r}; fix: a comma-separated subset of {known}")
    gate = GateConfig(metrics=metrics, tolerance=args.tolerance, holdout=args.holdout)
    report = retrain(
        args.base,
        new,
        args.out,
        history=history,
        window_days=args.window,
        overrides=args.set,
        gate=gate,
        run_dir=Path(args.run_dir) if args.run_dir else None,
    )
    print(f"{report.version}: {report.gate['reason']}")
    print(json.dumps({k: report.gate[k] for k in ("candidate", "live")}, indent=1))
    return 0 if report.promoted else REFUSED_EXIT
