"""Log in, artifact out: build features, split, train, evaluate on test, export. The CLI and the tests
both call `train_and_export`."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys import artifact
from recsys.batch import Featurizer
from recsys.config import apply_overrides, check_prefixes, to_dict
from recsys.data import ClickLog
from recsys.index import FIRST_ITEM, IndexConfig
from recsys.model import BST, ModelConfig
from recsys.recommender import Recommender
from training.dataset import EncodedLog, Examples, Split, leave_one_out, sample_negatives, with_validation
from training.evaluate import (
    choose_serving,
    ctr_logits,
    ctr_metrics,
    rank_metrics,
    retrieval_ranks,
    score_ranks,
    served_metrics,
    user_vectors,
)
from training.trainer import FitResult, TrainConfig, distributed, fit

log = logging.getLogger(__name__)

SEED_HISTORY = 200  # behaviors per user shipped in the artifact to seed memory:// stores
POPULAR_LIST = 1000  # length of the cold-start list


@dataclass
class TrainReport:
    artifact: Path
    fit: FitResult
    test: dict[str, dict[str, float]]
    model: BST  # the in-memory model that was exported (best epoch, or the refit's last)
    data: EncodedLog
    selected: Path | None = None  # with train.refit: the selected model's artifact (under the run dir)
    selected_model: BST | None = None  # and the model itself, chosen on validation before the refit
    selection: FitResult | None = None  # and its fit (`fit` is then the refit's)


def configs(overrides: list[str]) -> tuple[ModelConfig, TrainConfig]:
    check_prefixes(overrides, ("model", "train", "index"))
    model_cfg = apply_overrides(ModelConfig(n_items=2), overrides, "model")
    return model_cfg, apply_overrides(TrainConfig(), overrides, "train")


def build_model(clog: ClickLog, model_cfg: ModelConfig) -> tuple[BST, Featurizer]:
    position = model_cfg.position if clog.has_time else "ordinal"
    if position != model_cfg.position:
        log.warning("the log has no timestamps: positions fall back to ordinal gaps")
    n_positions = (
        max(model_cfg.n_positions, model_cfg.retrieval_len + 2) if position == "ordinal" else model_cfg.n_positions
    )
    feats = Featurizer.build(clog, window_len=model_cfg.retrieval_len, n_positions=n_positions, position=position)
    cfg = dataclasses.replace(model_cfg, **feats.model_sizes())
    model = BST(cfg)
    model.load_state_dict(feats.side_buffers(), strict=False)
    return model, feats


def popular_list(popularity: np.ndarray) -> list[tuple[int, float]]:
    """The cold-start list from training clicks (held-out clicks never reach the artifact)."""
    counts = popularity.astype(np.float64)
    counts[:FIRST_ITEM] = 0
    order = np.argsort(-counts, kind="stable")[:POPULAR_LIST]
    total = counts.sum() or 1.0
    return [(int(i), float(counts[i] / total)) for i in order if i >= FIRST_ITEM]


def choose_serving_depth(path: Path, data: EncodedLog, valid: Examples, cfg: TrainConfig) -> int | None:
    """Serve a written version on (up to `cfg.eval_examples` of) the validation examples at each of
    `cfg.serve_depths` and `cfg.serve_blends`, and record the best pair, with the whole grid's metrics, in
    its manifest's `serving` entry: the recommender's default depth for requests that name none, and its
    blend weight (`recsys.recommender.blend_order`). Call it before the version goes live (the manifest
    is rewritten atomically either way)."""
    if not cfg.serve_depths or len(valid) == 0:
        return None
    if len(valid) > cfg.eval_examples:
        rng = np.random.default_rng([cfg.seed, 30_000])
        valid = valid.subset(np.sort(rng.choice(len(valid), cfg.eval_examples, replace=False)))
    metric = cfg.select_metric if cfg.select_metric in ("hr@10", "ndcg@10") else "ndcg@10"
    blends = cfg.serve_blends or (0.0,)
    depth, blend, grid = choose_serving(Recommender.load(path), data, valid, cfg.serve_depths, blends, metric)
    alone = grid.get(0.0)  # the ranker's order alone, when the grid tried it
    log.info(
        "serving depth %d, blend %g chosen on %d validation examples by served %s; by depth at blend %g: %s%s",
        depth,
        blend,
        len(valid),
        metric,
        blend,
        ", ".join(f"{d}: {m[metric]:.4f}" for d, m in grid[blend].items()),
        ""
        if alone is None
        else "; ranker alone (blend 0): " + ", ".join(f"{d}: {m[metric]:.4f}" for d, m in alone.items()),
    )
    artifact.update_manifest(
        path,
        {
            "serving": {
                "retrieval_depth": depth,
                "retrieval_blend": blend,
                "chosen_by": f"served {metric} on {len(valid)} validation examples",
                "validation": {str(d): m for d, m in grid[blend].items()},  # by depth, at the chosen blend
                "grid": {str(w): {str(d): m for d, m in by_depth.items()} for w, by_depth in grid.items()},
            }
        },
    )
    return depth


def test_metrics(
    model: BST, rec: Recommender, data: EncodedLog, split: Split, seed: int, max_users: int = 0
) -> dict[str, dict[str, float]]:
    """Held-out test metrics. Next item: full ranking over all items, seen excluded. CTR: each test
    positive against one uniform negative with the same history. With `max_users`, on that many test
    users drawn at random (one test example per user)."""
    rng = np.random.default_rng([seed, 20_000])
    test = split.test
    if 0 < max_users < len(test):
        test = test.subset(np.sort(rng.choice(len(test), max_users, replace=False)))
        log.info("test metrics on %d of %d test users (train.test_users)", max_users, len(split.test))
    ctr = type(test).concat([test, sample_negatives(data, test, 1, rng)])
    pop = torch.from_numpy(split.popularity.astype(np.float32))
    out = {
        "retrieval": rank_metrics(retrieval_ranks(model, data, test)),
        "served": served_metrics(rec, data, test),
        "popular": rank_metrics(score_ranks(lambda ex: pop.expand(len(ex), -1), data, test)),
    }
    out["bst"] = ctr_metrics(ctr.user, ctr.label, ctr_logits(model, data, ctr))
    return out


@dataclass
class Prepared:
    """What training needs from a log once it is encoded: the seeded model, the encoded arrays (with their
    featurizer), the split, the log's summary for the manifest, and the parsed configs. It holds no
    reference to the `ClickLog`, so a caller that drops its own lets the canonical frame go before `fit`
    (measured at 20M events: 0.24 GiB less peak memory; README, Large logs)."""

    model: BST
    data: EncodedLog
    split: Split
    summary: dict[str, Any]
    train_cfg: TrainConfig
    index_cfg: IndexConfig


def prepare(clog: ClickLog, overrides: list[str] | None = None) -> Prepared:
    """Configs, vocabularies, the seeded model, the encoded log and its leave-one-out split."""
    overrides = overrides or []
    model_cfg, train_cfg = configs(overrides)
    torch.manual_seed(train_cfg.seed)
    model, feats = build_model(clog, model_cfg)
    data = EncodedLog.build(clog, feats)
    split = leave_one_out(data)
    if len(split.train) == 0 or len(split.valid) == 0:
        raise ValueError(f"{clog.source}: too few users with >= 3 clicks to train and validate; fix: pass a larger log")
    index_cfg = apply_overrides(IndexConfig(), overrides, "index")
    return Prepared(model, data, split, clog.summary(), train_cfg, index_cfg)


def train_and_export(
    clog: ClickLog, out: Path, overrides: list[str] | None = None, run_dir: Path | None = None, resume: bool = False
) -> TrainReport | None:
    """`prepare`, then `export_trained`: the whole pipeline from a log (the tests and bench.quality)."""
    return export_trained(prepare(clog, overrides), out, run_dir, resume)


def export_trained(prep: Prepared, out: Path, run_dir: Path | None = None, resume: bool = False) -> TrainReport | None:
    """Train, export a version under `out`, and report its test metrics. Under torchrun every rank
    trains (`training.trainer.fit`) and rank 0 alone exports; the other ranks return None.

    With `train.refit` the model chosen on validation (`selected`) is not the one exported: a second
    fit starts from the same initial weights and trains the selected number of epochs on the training
    split plus every user's validation click (`training.dataset.with_validation`: the newest click
    before the test one, which the first fit never learnt from), keeping its last epoch. The selected
    model is written under `run_dir/selected/` and serves the validation clicks to choose the serving
    depth and blend (the refit model has trained on them); the exported manifest carries that choice,
    the selected model's validation metrics and a `refit` entry. Test stays held out from both."""
    model, data, split, train_cfg = prep.model, prep.data, prep.split, prep.train_cfg
    run_dir = run_dir or Path("runs") / "fit"
    initial = copy.deepcopy(model.state_dict()) if train_cfg.refit else None
    t0 = time.monotonic()
    result = fit(model, data, split, train_cfg, run_dir, resume=resume)
    log.info("trained in %.1f s (best epoch %d)", time.monotonic() - t0, result.best_epoch)
    selected: BST | None = None
    trained_split, fit_result = split, result
    if initial is not None:
        selected = copy.deepcopy(model)
        model.load_state_dict(initial)
        trained_split = with_validation(split)
        refit_cfg = dataclasses.replace(train_cfg, epochs=max(1, result.best_epoch))
        log.info("refit: %d epochs on the training and validation clicks", refit_cfg.epochs)
        fit_result = fit(model, data, trained_split, refit_cfg, run_dir / "refit", resume=resume, keep_last=True)
        log.info("refit in %.1f s", fit_result.seconds)
    if distributed()[0] > 0:
        return None
    summary: dict[str, Any] = {
        **prep.summary,
        "split": "leave_one_out",
        "train_examples": len(trained_split.train),
        "valid": len(split.valid),
        "test": len(split.test),
    }
    extra: dict[str, Any] = {
        "train_config": to_dict(train_cfg),
        "train_seconds": round(result.seconds + (fit_result.seconds if selected is not None else 0.0), 1),
        "examples_per_second": round(fit_result.examples_per_second, 1),
    }
    selected_path = None
    if selected is not None:  # the selected model, to serve the validation clicks; not a registry version
        selected_summary = summary | {"train_examples": len(split.train)}
        selected_path = _export(selected, prep, split, result, run_dir / "selected", selected_summary, extra.copy())
        choose_serving_depth(selected_path, data, split.valid, train_cfg)
        serving = json.loads((selected_path / artifact.MANIFEST).read_text()).get("serving")
        extra |= {
            "refit": {
                "epochs": fit_result.history[-1]["epoch"] if fit_result.history else 0,
                "trained_on": "the training split plus every user's validation click (test held out)",
                "selected": {"best_epoch": result.best_epoch, "train_seconds": round(result.seconds, 1)},
                "refit_seconds": round(fit_result.seconds, 1),
                "validation_metrics_of": "the selected model (the refit model trained on the validation clicks)",
            },
        } | ({"serving": serving} if serving else {})
    path = _export(model, prep, trained_split, result, Path(out), summary, extra)
    if selected is None:
        choose_serving_depth(path, data, split.valid, train_cfg)
    artifact.set_latest(Path(out), path.name)
    rec = Recommender.load(path)
    test = test_metrics(model, rec, data, split, train_cfg.seed, train_cfg.test_users)
    if selected is None:
        return TrainReport(path, result, test, model, data)
    return TrainReport(path, fit_result, test, model, data, selected_path, selected, result)


def _export(
    model: BST,
    prep: Prepared,
    split: Split,
    result: FitResult,
    out: Path,
    summary: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    """A version of `model` under `out` (LATEST not moved): the popular list from `split`'s training
    clicks, the validation metrics of `result` (the selection fit)."""
    data = prep.data
    return artifact.save(
        out,
        model,
        data.featurizer,
        popular_list(split.popularity),
        data.seed_table(SEED_HISTORY),
        summary,
        {f"valid_{k}": v for k, v in result.best_metrics.items()},
        make_latest=False,
        index_config=prep.index_cfg,
        queries=user_vectors(model, data, split.valid, prep.index_cfg.recall_queries),
        extra=extra,
    )
