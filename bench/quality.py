"""`python -m bench.quality`: the BST against the baselines of its paper (WDL, WDL(+Seq), DIN), SASRec,
ItemKNN and most-popular on one log, under three protocols, mean ± std over seeds.

    python -m bench.quality --dataset synthetic --epochs 2 --seeds 1
    python -m bench.quality --dataset ml-1m --path ../shared/data/ml-1m --seeds 3 --json runs/quality-ml-1m.json
    python -m bench.quality --dataset ml-100k --path ../shared/data/ml-100k --models din,itemknn --eval-users 500

Per seed the features and the leave-one-out split are built once. The BST trains through
`training.pipeline.train_and_export`; every neural baseline through `training.trainer.fit` on the same
split with the same TrainConfig (seed, epochs, learning rate, the same sampled and real negatives),
except hard negatives: they are mined by a retrieval head, which only the BST has. Every model selects
its epoch on validation only; ItemKNN picks its variant on validation from a small grid.

Every model is then scored on the same test examples (see `PROTOCOLS`). The table is printed (this is a
CLI) and `--json OUT` writes the means, standard deviations and per-seed numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.protocols import (
    CandidateScorer,
    catalogue_candidates,
    model_candidates,
    retrieval_candidates,
    sample_unseen,
    sampled_ranks,
    target_scores,
    test_ctr_examples,
)
from recsys.config import to_dict
from recsys.data import ClickLog, load_log
from recsys.errors import RecsysError
from recsys.model import History, ModelConfig
from recsys.recommender import Recommender
from training import synth
from training.baselines import (
    DIN,
    CTRConfig,
    ItemKNN,
    ItemKNNConfig,
    MostPopular,
    SASRec,
    SASRecConfig,
    WideDeep,
    WideDeepSeq,
    catalogue_scorer,
    items_scorer,
)
from training.dataset import EncodedLog, Examples, Split, leave_one_out
from training.evaluate import (
    batched,
    ctr_logits,
    ctr_metrics,
    rank_metrics,
    retrieval_ranks,
    score_ranks,
    served_ranks,
)
from training.pipeline import TrainReport, build_model, configs, train_and_export
from training.trainer import FitResult, TrainConfig, fit, validation_set

log = logging.getLogger("bench.quality")

DATASETS = ("synthetic", "ml-100k", "ml-latest-small", "ml-1m", "amazon", "taobao")
MODELS = ("bst", "sasrec", "din", "wdl-seq", "wdl", "itemknn", "popular")
NEURAL: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "sasrec": lambda cfg: SASRec(SASRecConfig.from_model(cfg)),
    "din": lambda cfg: DIN(CTRConfig.from_model(cfg)),
    "wdl-seq": lambda cfg: WideDeepSeq(CTRConfig.from_model(cfg)),
    "wdl": lambda cfg: WideDeep(CTRConfig.from_model(cfg)),
}
# the synthetic log of the tests (tests/conftest.py): small enough for a smoke run on a laptop CPU
SYNTH = synth.SynthConfig(n_users=400, n_items=200, n_categories=10, events_per_user=25.0, seed=0)
# ItemKNN variants, one picked per seed on validation NDCG@10
ITEMKNN_GRID = (
    ItemKNNConfig(),
    ItemKNNConfig(last=1),
    ItemKNNConfig(decay=0.7),
    ItemKNNConfig(pair_window=1, last=1),
    ItemKNNConfig(pair_window=3, decay=0.5),
)
PROTOCOLS = {
    "split": "leave-one-out: per user with >= 3 positives the last is test, the one before validation",
    "ctr": "CTR: each test positive vs one uniform sampled negative with the same history (the pairs of "
    "training.pipeline.test_metrics); logloss only for models trained with a log loss",
    "full": "next item, full ranking: the held-out item ranked against every item, items the user clicked "
    "before excluded; bst = served (FAISS retrieval top-K -> BST ranker, top 10 only, so no Recall@50; K, "
    "the serving depth, chosen on validation at export: training.pipeline.choose_serving_depth)",
    "sampled": "next item, sampled-100: the held-out item ranked among 100 items drawn uniformly from "
    "those the user never clicked (the SASRec/BERT4Rec protocol)",
}
CTR_KEYS = ("auc", "gauc", "logloss")
FULL_KEYS = ("hr@10", "ndcg@10", "recall@50")
SAMPLED_KEYS = ("sampled_hr@10", "sampled_ndcg@10")
Results = dict[str, dict[str, float]]  # model -> metric -> value
COST_KEYS = ("train_seconds", "examples_per_second", "best_epoch")
VALID_KEYS = ("valid_auc", "valid_ndcg@10")  # the chosen epoch's validation metrics: what selection saw
DEPTH_KEYS = ("served_depth", "served_blend", "valid_served_ndcg@10")  # K and w chosen on validation, and the score
DEPTH_KEYS_0 = ("valid_served_ndcg@10_w0",)  # the same depth with the ranker alone (blend 0), on validation
HEADERS = {
    "auc": "AUC",
    "gauc": "GAUC",
    "hr@10": "HR@10",
    "ndcg@10": "NDCG@10",
    "recall@50": "Recall@50",
    "train_seconds": "train s",
    "examples_per_second": "examples/s",
    "best_epoch": "best epoch",
    "valid_auc": "valid AUC",
    "valid_ndcg@10": "valid NDCG@10",
    "served_depth": "K",
    "served_blend": "w",
    "valid_served_ndcg@10_w0": "valid served NDCG@10, w = 0",
    "valid_served_ndcg@10": "valid served NDCG@10",
}


# -- data -------------------------------------------------------------------------------------------


def load(args: argparse.Namespace, work: Path) -> ClickLog:
    if args.dataset == "synthetic":
        cfg = dataclasses.replace(SYNTH, n_users=args.synth_users, n_items=args.synth_items)
        paths = synth.write(cfg, work / "synthetic")
        return load_log(paths["clicks"], paths["items"], paths["users"])
    from training.datasets import load_dataset  # a colleague's module; only the public logs need it

    clog, report = load_dataset(args.dataset, args.path, attributes=args.attributes)
    log.info("%s", report.line())
    return clog


@dataclasses.dataclass
class TestSet:
    """What every model is scored on, for one seed, and the three protocols."""

    positives: Examples  # held-out test positives of the scored users (next-item protocols)
    pairs: Examples  # CTR, every test user (cheap: two scores a user): the positives, then one negative each
    unseen: np.ndarray  # (len(positives), 100) sampled-100 negatives

    @classmethod
    def build(cls, data: EncodedLog, split: Split, seed: int, users: int | None) -> TestSet:
        pairs = test_ctr_examples(data, split, seed)  # drawn for the whole test set, as the BST report's
        n = len(split.test)
        rows = np.arange(n)
        if users is not None and users < n:
            rows = np.sort(np.random.default_rng([seed, 40_000]).choice(n, users, replace=False))
        positives = split.test.subset(rows)
        return cls(positives, pairs, sample_unseen(data, positives, seed))

    def ctr(self, scores: np.ndarray, calibrated: bool) -> dict[str, float]:
        """AUC, GAUC and, for scores that are log-odds trained with a log loss, logloss."""
        m = ctr_metrics(self.pairs.user, self.pairs.label, scores)
        return m if calibrated else {k: v for k, v in m.items() if k != "logloss"}

    def sampled(self, score: CandidateScorer) -> dict[str, float]:
        m = rank_metrics(sampled_ranks(score, self.positives, self.unseen))
        return {"sampled_hr@10": m["hr@10"], "sampled_ndcg@10": m["ndcg@10"]}


def full(ranks: np.ndarray, keys: tuple[str, ...] = FULL_KEYS) -> dict[str, float]:
    m = rank_metrics(ranks)
    return {k: m[k] for k in keys}


def fit_cost(result: FitResult) -> dict[str, float]:
    """Training cost and the chosen epoch's validation metrics (AUC; NDCG@10 for models with a
    retrieval head), so a results file shows what model selection saw, not only the test."""
    chosen = result.best_metrics
    valid = {key: chosen[key.removeprefix("valid_")] for key in VALID_KEYS if key.removeprefix("valid_") in chosen}
    return {
        "train_seconds": result.seconds,
        "examples_per_second": result.examples_per_second,
        "best_epoch": float(result.best_epoch),
        **valid,
    }


# -- models -----------------------------------------------------------------------------------------


def fast_ctr_logits(rec: Recommender, data: EncodedLog, ex: Examples, batch_size: int = 512) -> np.ndarray:
    """Ranker logits of each example's target through the recommender's own (served) scorer."""
    out = []
    for sl in batched(len(ex), batch_size):
        b = data.batch(ex.subset(np.arange(sl.start, sl.stop)))
        hist = History(*(b[f] for f in History._fields))
        out.append(rec.score(hist, b["target"].unsqueeze(1))[:, 0].numpy())  # (B, 1) -> (B,)
    return np.concatenate(out) if out else np.zeros(0)


def score_bst(report: TrainReport, ts: TestSet, check: bool, precisions: Sequence[str] = ()) -> Results:
    """bst: the ranker (CTR, sampled-100) and the served pipeline (full ranking); retrieval: the head
    alone. `check`: the test set is the pipeline's own, so its report must agree. `precisions` (int8,
    bf16): also bst-int8 / bst-bf16, the same model served at that precision (ranker AUC through the
    served scorer, and the served pipeline), beside bst-fast-fp32 (the same served scorer in fp32), for
    the quality-parity check of issue 8."""
    bst, data = report.model, report.data
    rec = Recommender.load(report.artifact)
    served = full(served_ranks(rec, data, ts.positives), ("hr@10", "ndcg@10"))
    chosen = rec.artifact.manifest.get("serving", {}).get("validation", {}).get(str(rec.retrieval_depth), {})
    alone = rec.artifact.manifest.get("serving", {}).get("grid", {}).get("0.0", {}).get(str(rec.retrieval_depth), {})
    depth = (
        {"served_depth": float(rec.retrieval_depth), "served_blend": rec.retrieval_blend}
        | ({"valid_served_ndcg@10": chosen["ndcg@10"]} if "ndcg@10" in chosen else {})
        | ({"valid_served_ndcg@10_w0": alone["ndcg@10"]} if "ndcg@10" in alone else {})
    )
    ranker = ts.ctr(ctr_logits(bst, data, ts.pairs), calibrated=True)
    if check:
        for ours, theirs in ((ranker, report.test["bst"]), (served, report.test["served"])):
            if any(abs(ours[k] - theirs[k]) > 1e-9 for k in ours):
                log.warning("differs from the pipeline's own test report: %s vs %s", ours, theirs)
    retrieval = retrieval_candidates(bst, data)
    extra: Results = {}
    if precisions:  # like for like: the ranker's AUC through the served (fast) scorer, fp32 and lower
        extra["bst-fast-fp32"] = ts.ctr(fast_ctr_logits(Recommender.load(report.artifact), data, ts.pairs), True)
    for precision in precisions:
        low = Recommender.load(report.artifact, precision=precision)
        extra[f"bst-{precision}"] = ts.ctr(fast_ctr_logits(low, data, ts.pairs), calibrated=True) | full(
            served_ranks(low, data, ts.positives), ("hr@10", "ndcg@10")
        )
    cost = fit_cost(report.fit)
    if report.selection is not None and report.selected is not None and report.selected_model is not None:
        # train.refit: the exported model is the refit; the selected one (before it) is the ablation, and the
        # cost is both fits, the validation metrics the selected model's (the refit trained on validation)
        cost = fit_cost(report.selection) | {
            "train_seconds": report.selection.seconds + report.fit.seconds,
            "refit_seconds": report.fit.seconds,
        }
        before = Recommender.load(report.selected)
        extra["selected"] = {
            **{
                f"served_{k}": v
                for k, v in full(served_ranks(before, data, ts.positives), ("hr@10", "ndcg@10")).items()
            },
            **{
                f"retrieval_{k}": v
                for k, v in full(
                    retrieval_ranks(report.selected_model, data, ts.positives), ("hr@10", "ndcg@10")
                ).items()
            },
        }
    return {
        "bst": ranker | served | ts.sampled(model_candidates(bst, data)) | cost | depth,
        "served": served,
        "retrieval": (
            ts.ctr(target_scores(retrieval, ts.pairs), calibrated=False)
            | full(retrieval_ranks(bst, data, ts.positives))
            | ts.sampled(retrieval)
        ),
    } | extra


def score_model(model: nn.Module, data: EncodedLog, ts: TestSet) -> dict[str, float]:
    """A neural baseline: CTR from its forward (as its validation), next item from `score` (SASRec's
    full ranking through its item vectors, which is the same and faster)."""
    retrieval = hasattr(model, "encode_user")  # SASRec: logits are dot products, not trained log-odds
    if retrieval:
        ranks = retrieval_ranks(model, data, ts.positives)
    else:
        ranks = score_ranks(catalogue_scorer(model, data), data, ts.positives)
    candidates = model_candidates(model, data)
    return ts.ctr(ctr_logits(model, data, ts.pairs), calibrated=not retrieval) | full(ranks) | ts.sampled(candidates)


def score_catalogue(scores: Callable[[torch.Tensor], torch.Tensor], data: EncodedLog, ts: TestSet) -> dict[str, float]:
    """A non-neural `scores(history_items) -> (B, N)` (ItemKNN, most-popular) under every protocol."""
    scorer = items_scorer(scores, data)
    candidates = catalogue_candidates(scorer)
    ranks = score_ranks(scorer, data, ts.positives)
    return ts.ctr(target_scores(candidates, ts.pairs), calibrated=False) | full(ranks) | ts.sampled(candidates)


def baseline_config(train_cfg: TrainConfig, model: nn.Module) -> TrainConfig:
    """The BST's TrainConfig less hard negatives (mining them needs a retrieval head, which only the BST
    has); a model without next-item metrics selects on validation AUC (the trainer's fallback, made
    explicit because its learning-curve plot reads `valid_<select_metric>`)."""
    select = train_cfg.select_metric if hasattr(model, "encode_user") else "auc"
    return dataclasses.replace(train_cfg, hard_negatives=0, select_metric=select)


def pick_itemknn(data: EncodedLog, split: Split, train_cfg: TrainConfig) -> ItemKNN:
    """The ItemKNN variant with the best validation NDCG@10 (on the trainer's validation subset)."""
    valid, _ = validation_set(data, split, train_cfg)
    best, best_score = None, -1.0
    for cfg in ITEMKNN_GRID:
        knn = ItemKNN.fit(data, split, cfg)
        score = rank_metrics(score_ranks(items_scorer(knn.scores, data), data, valid))["ndcg@10"]
        log.info("itemknn %s: valid ndcg@10 %.4f", cfg, score)
        if score > best_score:
            best, best_score = knn, score
    assert best is not None
    return best


def run_seed(clog: ClickLog, seed: int, args: argparse.Namespace, work: Path) -> tuple[Results, dict[str, Any]]:
    """Train and score every requested model for one seed -> (metrics per model, notes)."""
    overrides = [*args.set, f"train.seed={seed}", "train.progress=false"]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    model_cfg, train_cfg = configs(overrides)
    results: Results = {}
    serving = None
    if "bst" in args.models:
        report = train_and_export(clog, work / f"artifact-{seed}", overrides, run_dir=work / f"bst-{seed}")
        assert report is not None  # one process: rank 0
        data, model_cfg = report.data, report.model.cfg
        split = leave_one_out(data)
        ts = TestSet.build(data, split, seed, args.eval_users)
        results.update(score_bst(report, ts, check=args.eval_users is None, precisions=args.precisions))
        serving = json.loads((report.artifact / "manifest.json").read_text()).get("serving")
    else:  # the features and split train_and_export would build
        bst, feats = build_model(clog, model_cfg)
        data, model_cfg = EncodedLog.build(clog, feats), bst.cfg
        split = leave_one_out(data)
        ts = TestSet.build(data, split, seed, args.eval_users)
    for name in (m for m in NEURAL if m in args.models):
        torch.manual_seed(seed)
        model = NEURAL[name](model_cfg)
        model.load_state_dict(data.featurizer.side_buffers(), strict=False)  # the item -> side-feature tables
        log.info("%s: training %d parameters", name, sum(p.numel() for p in model.parameters()))
        result = fit(model, data, split, baseline_config(train_cfg, model), work / f"{name}-{seed}")
        results[name] = score_model(model, data, ts) | fit_cost(result)
    notes: dict[str, Any] = {
        "test_users": len(ts.positives),
        "ctr_pairs": len(ts.pairs) // 2,
        "model_config": to_dict(model_cfg),
        "train_config": to_dict(train_cfg),
    }
    if serving:
        notes["serving"] = serving  # the depth the export chose and every depth's validation scores
    if "itemknn" in args.models:
        t0 = time.monotonic()
        knn = pick_itemknn(data, split, train_cfg)
        results["itemknn"] = score_catalogue(knn.scores, data, ts) | {"train_seconds": time.monotonic() - t0}
        notes["itemknn"] = dataclasses.asdict(knn.cfg)
    if "popular" in args.models:
        t0 = time.monotonic()
        pop = MostPopular.fit(data, split)
        results["popular"] = score_catalogue(pop.scores, data, ts) | {"train_seconds": time.monotonic() - t0}
    return results, notes


# -- report -----------------------------------------------------------------------------------------


def summarise(per_seed: dict[int, Results]) -> tuple[Results, Results]:
    """Per seed -> (mean, std) per model and metric, over the seeds that have the metric."""
    means: dict[str, dict[str, float]] = {}
    stds: dict[str, dict[str, float]] = {}
    models = list(dict.fromkeys(m for runs in per_seed.values() for m in runs))
    for model in models:
        keys = list(dict.fromkeys(k for runs in per_seed.values() for k in runs.get(model, {})))
        for key in keys:
            values = np.array([runs[model][key] for runs in per_seed.values() if key in runs.get(model, {})])
            means.setdefault(model, {})[key] = float(values.mean())
            stds.setdefault(model, {})[key] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return means, stds


def cell(means: dict[str, float], stds: dict[str, float], key: str, n_seeds: int) -> str:
    if key not in means:
        return "–"
    if key == "examples_per_second":
        return f"{means[key]:,.0f}"
    if key == "served_blend":
        return f"{means[key]:.2f}" + (f" ± {stds[key]:.2f}" if n_seeds > 1 else "")
    if key in ("train_seconds", "best_epoch", "served_depth"):
        return f"{means[key]:.1f}" + (f" ± {stds[key]:.1f}" if n_seeds > 1 else "")
    return f"{means[key]:.4f}" + (f" ± {stds[key]:.4f}" if n_seeds > 1 else "")


def table(title: str, keys: tuple[str, ...], means: dict, stds: dict, rows: list[str], n_seeds: int) -> str:
    head = ["model", *(HEADERS.get(k.removeprefix("sampled_"), k) for k in keys)]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if any(k in means.get(row, {}) for k in keys):
            cells = [cell(means[row], stds[row], k, n_seeds) for k in keys]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(dataset: str, means: dict, stds: dict, seeds: list[int], notes: dict) -> str:
    n = len(seeds)
    first = notes[seeds[0]]
    spread = "mean ± std over seeds " + ", ".join(map(str, seeds)) if n > 1 else f"seed {seeds[0]}"
    rows = ["bst", "bst-fast-fp32", "bst-int8", "bst-bf16", "retrieval", "sasrec", "din", "wdl-seq", "wdl"]
    rows += ["itemknn", "popular"]
    parts = [
        f"## {dataset}: {PROTOCOLS['split']}; {spread}",
        table(
            f"CTR: test positive vs one uniform sampled negative, same history ({first['ctr_pairs']} pairs)",
            CTR_KEYS,
            means,
            stds,
            rows,
            n,
        ),
        table(
            f"Next item, full ranking, seen excluded ({first['test_users']} test users"
            + ("; bst = served: retrieval top-K -> ranker, top 10 only)" if "bst" in means else ")"),
            FULL_KEYS,
            means,
            stds,
            rows,
            n,
        ),
        table(
            f"Next item, sampled-100: held-out item vs 100 uniformly sampled unseen items ({first['test_users']} "
            "test users)",
            SAMPLED_KEYS,
            means,
            stds,
            rows,
            n,
        ),
        table("Validation, the chosen epoch (model selection saw only these)", VALID_KEYS, means, stds, rows, n),
        table(
            "Serving depth K and blend weight w, chosen on validation (served NDCG@10 there, and at the same K "
            "with the ranker's order alone)",
            DEPTH_KEYS + DEPTH_KEYS_0,
            means,
            stds,
            rows,
            n,
        ),
        table("Training cost", COST_KEYS, means, stds, rows, n),
    ]
    for seed in (s for s in seeds if "serving" in notes[s]):
        serving = notes[seed]["serving"]
        blend = float(serving.get("retrieval_blend", 0.0))
        chosen = f" -> K = {serving['retrieval_depth']}, w = {blend:g}"
        # the whole grid, one line a blend weight, the chosen one marked; runs stored before the blend
        # have no grid: their scores by depth alone
        grid = serving.get("grid") or {str(blend): serving["validation"]}
        parts.append(f"seed {seed}: served NDCG@10 on validation by blend weight w and depth K{chosen}")
        for w in sorted(grid, key=float):
            parts.append(
                f"seed {seed}, blend w = {float(w):g}: "
                + ", ".join(f"{d}: {grid[w][d]['ndcg@10']:.4f}" for d in sorted(grid[w], key=int))
                + (" (chosen)" if float(w) == blend else "")
            )
    if "itemknn" in first:
        parts.append("itemknn (picked on validation): " + ", ".join(str(notes[s].get("itemknn")) for s in seeds))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--path", help="the dataset's file or folder (training.datasets.load_dataset)")
    parser.add_argument("--attributes", help="optional item attributes file (training.datasets.load_dataset)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--epochs", type=int, help="train.epochs for every model (default: TrainConfig's)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument(
        "--eval-users",
        type=int,
        help="rank the full catalogue and sampled-100 for a fixed random subset of test users (default: all); "
        "the CTR pairs always cover every test user",
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    parser.add_argument("--synth-users", type=int, default=SYNTH.n_users, help="synthetic users (default %(default)s)")
    parser.add_argument("--synth-items", type=int, default=SYNTH.n_items, help="synthetic items (default %(default)s)")
    parser.add_argument("--work-dir", type=Path, help="keep artifacts and run dirs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the results as JSON (after every seed)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the seeds an earlier run of the same command wrote to --json and run only the missing ones",
    )
    parser.add_argument(
        "--precisions",
        default="",
        metavar="LIST",
        help="also score the BST served at these precisions (int8, bf16; rows bst-int8, bst-bf16: AUC, GAUC, "
        "served HR/NDCG@10) beside the same served scorer in fp32 (row bst-fast-fp32: AUC, GAUC)",
    )
    args = parser.parse_args(argv)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if bad := sorted(set(args.precisions) - {"int8", "bf16"}):
        parser.error(f"--precisions {','.join(bad)}: unknown; fix: use int8 and/or bf16")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.dataset != "synthetic" and args.path is None:
        parser.error(f"--dataset {args.dataset} needs --path (the downloaded files; see training.datasets)")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {','.join(MODELS)}")
    run = run_options(args)
    per_seed: dict[int, Results] = {}
    notes: dict[int, Any] = {}
    if args.resume:
        if args.json is None:
            parser.error("--resume needs --json, the file of the run to finish")
        if args.json.exists():
            old = json.loads(args.json.read_text())
            stored = old.get("run", {})
            if diff := [k for k in RUN_OPTIONS if stored.get(k) != run[k]]:
                k = diff[0]
                parser.error(
                    f"--resume: {args.json} holds a run with {k}={stored.get(k)!r}, this command has "
                    f"{run[k]!r}; fix: repeat that run's options, or write to a new --json"
                )
            per_seed = {int(s): r for s, r in old["per_seed"].items() if int(s) < args.seeds}
            notes = {int(s): n for s, n in old["notes"].items() if int(s) in per_seed}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = args.work_dir or Path(tmp)
        try:
            clog = load(args, work)
            for seed in seeds:
                if seed in per_seed:
                    log.info("seed %d: kept from %s", seed, args.json)
                    continue
                per_seed[seed], notes[seed] = run_seed(clog, seed, args, work)
                if args.json:  # a long run keeps the seeds it finished (see --resume)
                    write_json(args.json, run, per_seed, notes)
                    log.info("seed %d done; %s holds seeds %s", seed, args.json, sorted(per_seed))
        except RecsysError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
    per_seed = dict(sorted(per_seed.items()))
    means, stds = summarise(per_seed)
    print(render(args.dataset, means, stds, seeds, notes))
    if args.json:
        write_json(args.json, run, per_seed, notes)
        print(f"\nwrote {args.json}")
    return 0


RUN_OPTIONS = (
    *("dataset", "path", "attributes", "models", "epochs", "eval_users", "set", "precisions"),
    *("synth_users", "synth_items"),
)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that make two invocations the same experiment (all but --seeds, --json, --work-dir,
    --resume), as JSON values; `--resume` continues a run only under the same ones."""
    return {k: getattr(args, k) for k in RUN_OPTIONS}


def write_json(path: Path, run: dict[str, Any], per_seed: dict[int, Results], notes: dict[int, Any]) -> None:
    means, stds = summarise(per_seed)
    out = {
        "run": run,
        "dataset": run["dataset"],
        "protocol": PROTOCOLS,
        "models": {m: {k: v for k, v in ms.items() if k not in COST_KEYS} for m, ms in means.items()},
        "std": {m: {k: v for k, v in ms.items() if k not in COST_KEYS} for m, ms in stds.items()},
        "seeds": sorted(per_seed),
        "per_seed": {str(s): runs for s, runs in per_seed.items()},
        **{key: {m: ms[key] for m, ms in means.items() if key in ms} for key in COST_KEYS},
        "notes": {str(s): n for s, n in notes.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
