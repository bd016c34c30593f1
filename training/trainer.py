"""The training loop, written once: AdamW, linear warm-up then cosine decay, early stopping on a
validation metric, checkpoint and resume, reproducible seeds, a JSONL metrics log and a
learning-curve PNG. Test data never reaches this module: selection is on validation only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from recsys.config import to_dict
from recsys.errors import InvalidArgument
from recsys.model import BST
from recsys.recommender import MAX_RETRIEVAL_DEPTH
from training.dataset import (
    EncodedLog,
    Epoch,
    Examples,
    Split,
    Windows,
    hard_negative_items,
    narrow,
    negative_items,
    next_item_windows,
    sample_negatives,
    to_device,
)
from training.evaluate import ctr_logits, ctr_metrics, rank_metrics, retrieval_ranks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 256  # examples per step
    lr: float = 3e-3  # peak learning rate after warm-up (1e-3 stayed on the popularity plateau for epochs)
    weight_decay: float = 0.1  # AdamW decoupled weight decay (0.01 until 2026-12-07; README, Results)
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 0.5  # max global gradient norm (1.0 until 2026-12-07: 0.5 with weight decay 0.1 led
    # on validation on Amazon Beauty and Sports, 3 seeds each, and was level on MovieLens-1M)
    negatives: int = 1  # sampled negatives per positive when the log has no label-0 rows
    negative_sampling: Literal["uniform", "popularity"] = "uniform"  # how sampled negatives are drawn
    real_negatives: Literal["add", "only", "never"] = "add"  # label-0 rows: beside sampled ones, alone, or unused
    hard_negatives: int = 1  # per positive, drawn from the retrieval head's top `hard_pool` (from epoch 2)
    hard_pool: int = 200  # the served retrieval depth: the candidates the ranker must order
    group_histories: bool = True  # a step takes a positive and its negatives together (they share a history,
    # which the BST then encodes once for its retrieval-score input); False: examples shuffled one by one
    next_item_passes: int = 0  # passes over the next-item windows per epoch; 0 = auto (see `auto_passes`)
    patience: int = 3  # epochs without validation improvement before stopping
    select_metric: str = "ndcg@10"  # validation metric that picks the best epoch (retrieval or ctr key)
    eval_examples: int = 5000  # validation examples evaluated per epoch (a fixed random subset)
    test_users: int = 20_000  # test users evaluated after training (a fixed random sample; 0 = all): the
    # served metric runs the whole pipeline per user, an hour for a million users
    seed: int = 0  # seeds torch and numpy; a run is reproducible on the same machine
    num_workers: int = 0  # DataLoader worker processes building batches
    max_minutes: float = 30.0  # wall-clock budget, checked every BUDGET_CHECK_STEPS steps: the epoch it ends is cut
    # short and validated, and the best epoch so far is kept
    progress: bool = True  # tqdm progress bar with the running loss
    serve_depths: tuple[int, ...] = (10, 20, 50, 100, 200)  # retrieval depths served on validation after
    # training; the best (served NDCG@10, or select_metric when it is hr@10) becomes the artifact's default
    # depth (`training.evaluate.choose_serving`); () keeps the recommender's default, 200
    serve_blends: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # weights of retrieval's opinion in the
    # served order (`recsys.recommender.blend_order`: 0 = the ranker alone), tried with every depth; the best
    # pair on validation is served
    refit: bool = False  # after selection, train again from the same initial weights for the best epoch count
    # on the training split plus every user's validation click, and export that model (`training.pipeline`:
    # the serving depth and blend and the manifest's validation metrics are the selected model's)
    device: str = "cpu"  # where `fit` trains: cpu, cuda (under torchrun each rank takes cuda:LOCAL_RANK),
    # cuda:N, or auto (cuda when torch sees a GPU). The model comes back on the CPU for export and serving.

    def __post_init__(self) -> None:
        bad = [d for d in self.serve_depths if not 10 <= d <= MAX_RETRIEVAL_DEPTH]
        if bad:
            raise InvalidArgument(
                f"train.serve_depths={list(self.serve_depths)}: {bad[0]} is out of range; fix: depths between 10 "
                f"(the served top 10) and {MAX_RETRIEVAL_DEPTH}, e.g. [10,20,50,100,200], or [] to keep the default"
            )
        if bad_w := [w for w in self.serve_blends if not 0 <= w < float("inf")]:
            raise InvalidArgument(
                f"train.serve_blends={list(self.serve_blends)}: {bad_w[0]} is not a weight; fix: finite weights "
                ">= 0, e.g. [0,0.5,1,2] ([0] serves the ranker's order alone)"
            )
        train_device(self.device)  # a bad or absent device fails here, before any data is read


def train_device(name: str) -> torch.device:
    """The device `train.device` names on this machine; InvalidArgument when it is malformed or absent."""
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", name):
        raise InvalidArgument(f"train.device={name!r} is not a device; fix: cpu, cuda, cuda:N or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InvalidArgument(
            f"train.device={name!r}: torch sees no CUDA device (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); fix: --set train.device=cpu, or a CUDA build of torch on a machine with a GPU"
        )
    # torchrun: one GPU per local rank; cuda:N names one GPU for a single process
    index = int(name.split(":")[1]) if ":" in name else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise InvalidArgument(
            f"train.device={name!r}: GPU {index} does not exist ({torch.cuda.device_count()} visible); "
            f"fix: cuda:0 to cuda:{torch.cuda.device_count() - 1}, or one torchrun process per GPU"
        )
    return torch.device("cuda", index)


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    examples_per_second: float = 0.0


class _Collate:
    """Picklable collate for DataLoader workers: (example rows, window rows) -> model inputs."""

    def __init__(self, data: EncodedLog, examples: Examples | Epoch, windows: Windows | None):
        self.data, self.examples, self.windows = data, examples, windows

    def __call__(self, chunk: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        rows, wrows = chunk[0]
        examples = self.examples.subset(rows)
        batch = self.data.batch(examples)
        # the listwise loss's lists: rows sharing a history share a group; positives not to be listed are
        # left out by the model (`listwise`)
        batch["group"] = torch.from_numpy(examples.history_groups())
        batch["listwise"] = torch.from_numpy(np.asarray(examples.listwise))
        if self.windows is not None:
            inputs, targets = self.windows.inputs[wrows], self.windows.targets[wrows]  # (S, L) each
            filled = np.flatnonzero(inputs.any(0))
            first = int(filled[0]) if len(filled) else inputs.shape[1] - 1  # drop all-padding columns
            batch["next_items"] = torch.from_numpy(inputs[:, first:].astype(np.int64))
            batch["next_targets"] = torch.from_numpy(targets[:, first:].astype(np.int64))
        return batch


def auto_passes(n_pairs: int) -> int:
    """Enough passes over the next-item pairs for about 500k pair visits an epoch, 1 to 16: a small log
    gets more (its ranker epoch is short too), a large one one. Measured on Amazon Beauty (131k pairs):
    4 passes cost 0.136 s a step against 0.113 for 1 and 0.418 for 16; on the 10k-event test log 16
    passes reached served HR@10 0.32 in 5 epochs against 0.23 for 4."""
    return int(min(16, max(1, round(500_000 / max(1, n_pairs)))))


def window_steps(windows: Windows | None, passes: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The epoch's next-item windows (`passes` shuffled copies) dealt to `steps` steps. Windows of similar
    length share a step (sorted within runs of 32 steps), so a step's padding stays small; which run a
    window falls in stays random."""
    if windows is None or len(windows) == 0:
        return [np.zeros(0, np.int64) for _ in range(steps)]
    lengths = (windows.inputs > 0).sum(1)
    order = np.concatenate([rng.permutation(len(windows)) for _ in range(passes)])
    parts = np.array_split(order, steps)
    out: list[np.ndarray] = []
    for lo in range(0, steps, 32):
        run = np.concatenate(parts[lo : lo + 32])
        run = run[np.argsort(lengths[run], kind="stable")]
        out += np.array_split(run, len(parts[lo : lo + 32]))
    perm = rng.permutation(steps)
    return [out[i] for i in perm]


def grouped_permutation(examples: Examples | Epoch, rng: np.random.Generator) -> np.ndarray:
    """A random order of the examples in which those sharing a history (same user and history end: a
    positive and its sampled and mined negatives) are adjacent; groups and members in random order."""
    group = examples.history_groups()
    places = rng.permutation(int(group.max(initial=-1)) + 1)  # each group's random place
    # the narrowest type: the same values, so the same order, with fewer bytes at the peak
    rank = narrow(places, len(places))[group]
    del group, places  # arrays of the epoch's length fewer during the sort
    return np.lexsort((rng.random(len(examples)), rank))


def steps(n_examples: int, batch_size: int) -> int:
    """Training steps an epoch of `n_examples` takes (the last batch may be short)."""
    return max(1, math.ceil(n_examples / batch_size))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_examples(
    data: EncodedLog, split: Split, cfg: TrainConfig, epoch: int, model: nn.Module | None = None
) -> Epoch:
    """Training positives plus negatives: fresh samples each epoch, the log's label-0 rows, and from
    the second epoch hard negatives from the retrieval head (`model`). In this row order: positives,
    real negatives, sampled negatives (`cfg.negatives` a positive, in a row), mined ones.

    Sampled negatives are kept beside real ones by default: a ranker trained only on impressions
    (which skew popular) learns "popular means not clicked" and ranks retrieval's candidates badly;
    one trained only on uniform negatives separates plausible from random items but cannot order
    retrieval's (all plausible) candidates. Hard negatives teach it exactly that."""
    rng = np.random.default_rng([cfg.seed, epoch])
    train = split.train
    is_pos = train.label > 0.5
    pos_rows = np.flatnonzero(is_pos)
    pos = train if len(pos_rows) == len(train) else train.subset(pos_rows)  # no copy when all are positives
    # (src rows, targets, positive, listwise) of each part, in the epoch's row order
    parts: list[tuple[np.ndarray, np.ndarray, bool, np.ndarray | bool]] = [
        (pos_rows, pos.target, True, np.asarray(pos.listwise))
    ]
    if cfg.real_negatives != "never":
        neg_rows = np.flatnonzero(~is_pos)
        parts.append((neg_rows, train.target[neg_rows], False, np.asarray(train.listwise)[neg_rows]))
    if cfg.real_negatives != "only" and cfg.negatives > 0 and len(pos_rows):
        items = negative_items(data, pos.target, cfg.negatives, rng, cfg.negative_sampling, split.popularity)
        parts.append((np.repeat(pos_rows, cfg.negatives), items, False, True))
    if isinstance(model, BST) and epoch > 0 and cfg.hard_negatives > 0 and len(pos_rows):
        items, in_pool = hard_negative_items(model, data, pos, cfg.hard_negatives, cfg.hard_pool, rng)
        parts.append((np.repeat(pos_rows, cfg.hard_negatives), items, False, True))
        # the listwise loss takes only the lists the served ranker faces: a positive inside retrieval's
        # top `hard_pool`, against that pool. Taking every positive against its mined negatives taught the
        # ranker that a high retrieval score means "not clicked" (most training positives lie outside the
        # pool, below the negatives mined from it): served NDCG@10 on validation fell at every depth
        # (Amazon Beauty, seed 0: 0.0516 at K = 50 against the log loss alone's 0.0691; README, Results).
        # Without mining (the first epoch, or hard_negatives=0) every positive stays listed, against its
        # sampled negatives.
        parts[0] = (pos_rows, pos.target, True, in_pool)
    n = sum(len(p[0]) for p in parts)
    epoch_rows = Epoch(
        train,
        np.empty(n, np.int32 if len(train) < 2**31 else np.int64),
        np.empty(n, np.int32 if data.n_items < 2**31 else np.int64),
        np.empty(n, bool),
        np.empty(n, bool),
    )
    at = 0
    for rows, targets, positive, listwise in parts:
        part = slice(at, at + len(rows))
        epoch_rows.src[part], epoch_rows.target[part] = rows, targets
        epoch_rows.positive[part], epoch_rows.listwise[part] = positive, listwise
        at += len(rows)
    return epoch_rows


def epoch_size(split: Split, cfg: TrainConfig, mined: bool = False) -> int:
    """`len(epoch_examples(...))` without building the epoch: positives, the real negatives kept, the
    sampled ones and, with `mined`, the hard negatives (`cfg.hard_negatives` a positive). `fit` counts
    its learning-rate horizon with it: it used to build a whole epoch's arrays (37 bytes an example) and
    drop them, before training, only to take their length."""
    label = split.train.label
    n_pos = int((label > 0.5).sum())
    n = n_pos
    if cfg.real_negatives != "never":
        n += int((label < 0.5).sum())
    if cfg.real_negatives != "only" and cfg.negatives > 0:
        n += n_pos * cfg.negatives
    if mined and cfg.hard_negatives > 0:
        n += n_pos * cfg.hard_negatives
    return n


def validation_set(data: EncodedLog, split: Split, cfg: TrainConfig) -> tuple[Examples, Examples]:
    """A fixed subset of validation positives and one uniform negative for each (for AUC)."""
    rng = np.random.default_rng([cfg.seed, 10_000])
    valid = split.valid
    if len(valid) > cfg.eval_examples:
        valid = valid.subset(np.sort(rng.choice(len(valid), cfg.eval_examples, replace=False)))
    return valid, Examples.concat([valid, sample_negatives(data, valid, 1, rng)])


def evaluate(model: nn.Module, data: EncodedLog, positives: Examples, ctr: Examples) -> dict[str, float]:
    """CTR metrics of the ranker and, for models with a retrieval head (`encode_user`), next-item
    metrics (full ranking, seen excluded). Any model with `forward(batch) -> (logits, loss)` trains here."""
    out: dict[str, float] = {}
    if hasattr(model, "encode_user"):
        out.update(rank_metrics(retrieval_ranks(model, data, positives)))
    out.update(ctr_metrics(ctr.user, ctr.label, ctr_logits(model, data, ctr)))
    return out


BUDGET_CHECK_STEPS = 20  # steps between checks of the time budget within an epoch


def over_budget(t0: float, max_minutes: float, world: int) -> bool:
    """Whether `max_minutes` have passed since `t0`: on any rank, so that every rank stops at the
    same step (under DDP a rank that stopped alone would leave the others waiting in all-reduce)."""
    over = (time.monotonic() - t0) / 60 > max_minutes
    if world > 1:
        flag = torch.tensor([float(over)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        over = bool(flag.item())
    return over


def budget_horizon(done: int, elapsed: float, steps_timed: int, max_minutes: float, horizon: int, world: int) -> int:
    """The schedule's last step once `done` steps are taken: the steps the rest of the budget allows at
    this run's pace so far (`steps_timed` steps in `elapsed` seconds, validation included), at most
    `horizon`. Every rank gets rank 0's answer (replicas must share the learning rate)."""
    pace = elapsed / max(1, steps_timed)
    fits = done + int(max(0.0, max_minutes * 60 - elapsed) / pace) if pace > 0 else horizon
    out = max(done + 1, min(horizon, fits))
    if world > 1:
        flag = torch.tensor([out])
        torch.distributed.broadcast(flag, src=0)
        out = int(flag.item())
    return out


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temp file, then rename: a process killed mid-write leaves the previous file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def distributed() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised (torchrun, see `fit`)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(
    model: nn.Module,
    data: EncodedLog,
    split: Split,
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    keep_last: bool = False,
) -> FitResult:
    """Train `model` in place and load its best epoch's weights. With `keep_last` (a refit on data that
    includes the validation clicks, `training.pipeline`) nothing is validated: `cfg.epochs` epochs are
    trained (or as many as the time budget allows) and the last one's weights are kept.

    Data-parallel under torchrun (an initialised process group): every rank builds the same epoch (same
    seeds), takes every world-th step of it with `batch_size / world` examples, so the global batch and
    the schedule equal one process's; DistributedDataParallel averages the gradients. Every rank
    evaluates (replicas are identical, so they take the same early-stopping decisions); rank 0 alone
    writes the checkpoint, best weights and metrics, which the others read after a barrier (multi-node:
    `run_dir` on a shared filesystem). A restarted job (`torchrun --max-restarts`, `resume=True`)
    continues from the last checkpoint."""
    rank, world = distributed()
    if world > 1 and cfg.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the world size {world}")
    step_batch = cfg.batch_size // world
    device = train_device(cfg.device)
    model.to(device)
    trained: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # fused: one kernel over every parameter; on this CPU a step of a 2M-parameter model takes 1.6 ms
    # against 11.7 ms for the default per-tensor loop (ad hoc, 200 steps)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    n_first = epoch_size(split, cfg)  # the first epoch has no mined negatives yet
    n_later = epoch_size(split, cfg, mined=isinstance(model, BST))
    # the schedule's last step: `epochs` full epochs, shortened after each epoch to what the time budget
    # allows (`budget_horizon`), so a budget-bound run still ends its cosine decay. (Until stop 23 every
    # epoch was counted with mined negatives, so a run of all its epochs ended before the decay did.)
    horizon = [steps(n_first, cfg.batch_size) + (cfg.epochs - 1) * steps(n_later, cfg.batch_size)]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, horizon[0], cfg.min_lr_ratio)
    )
    # keep_last: the split trains on its validation clicks, so they are never evaluated (nor these sets built)
    valid_pos, valid_ctr = validation_set(data, split, cfg) if not keep_last else (split.valid, split.valid)
    # models with a next-item head (a `sequence_len`) see each user's training positives once an epoch
    seq_len = int(getattr(model, "sequence_len", 0))
    windows = next_item_windows(data, split.train, seq_len) if seq_len else None
    passes = cfg.next_item_passes or (auto_passes(int((windows.targets > 1).sum())) if windows is not None else 1)
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    metrics_path = run_dir / "metrics.jsonl"
    start_epoch, best, best_epoch, bad = 0, -math.inf, -1, 0
    history: list[dict[str, Any]] = []
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True, map_location=device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, best, best_epoch, bad = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"], ckpt["bad"]
        horizon[0] = int(ckpt.get("horizon", horizon[0]))
        history = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
        # a job killed after an epoch's metrics line but before its checkpoint repeats that epoch: drop the line
        history = [h for h in history if h["epoch"] <= start_epoch]
        if rank == 0:
            metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        log.info("resumed from %s at epoch %d (best %s=%.4f)", ckpt_path, start_epoch, cfg.select_metric, best)
    elif metrics_path.exists() and rank == 0:
        metrics_path.unlink()
    t0 = time.monotonic()
    start_steps = sched.last_epoch
    seen_examples = 0
    out_of_time = False
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        examples = epoch_examples(data, split, cfg, epoch, model)
        rng = np.random.default_rng([cfg.seed, epoch, 1])
        perm = grouped_permutation(examples, rng) if cfg.group_histories else rng.permutation(len(examples))
        chunks = [perm[i : i + step_batch] for i in range(0, len(perm), step_batch)]
        # the epoch's next-item windows, spread evenly over its steps
        wparts = window_steps(windows, passes, len(chunks), rng)
        log.debug("epoch %d: %d examples in %d steps", epoch + 1, len(examples), len(chunks))
        if world > 1:  # this rank's share; every rank takes the same number of steps (DDP syncs each)
            mine = slice(rank, len(chunks) // world * world, world)
            chunks, wparts = chunks[mine], wparts[mine]
        loader = DataLoader(
            list(zip(chunks, wparts, strict=True)),
            batch_size=1,
            shuffle=False,
            collate_fn=_Collate(data, examples, windows),
            num_workers=cfg.num_workers,
        )
        running, bar = (
            0.0,
            tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not cfg.progress or rank > 0,
                leave=False,
                unit="batch",
            ),
        )
        for step, batch in enumerate(bar):
            _, loss = trained(to_device(batch, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            sched.step()
            running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
            bar.set_postfix(loss=f"{running:.4f}")
            seen_examples += len(batch["label"])
            if step % BUDGET_CHECK_STEPS == BUDGET_CHECK_STEPS - 1 and over_budget(t0, cfg.max_minutes, world):
                log.info("time budget of %.1f min spent at step %d of epoch %d", cfg.max_minutes, step + 1, epoch + 1)
                out_of_time = True
                break
        bar.close()
        # the epoch's arrays go before evaluation and before the next epoch's are built beside them
        del loader, bar, chunks, wparts, perm, examples
        metrics = evaluate(model, data, valid_pos, valid_ctr) if not keep_last else {}
        record = {
            "epoch": epoch + 1,
            "train_loss": running,
            "lr": sched.get_last_lr()[0],
            "seconds": round(time.monotonic() - t0, 2),
            **{f"valid_{k}": v for k, v in metrics.items()},
        }
        if out_of_time:
            record["partial"] = True  # the budget ended this epoch early
        history.append(record)
        if rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        score = metrics.get(cfg.select_metric, metrics.get("auc", float(epoch)))  # keep_last: every epoch improves
        done = sched.last_epoch  # optimizer steps so far (this run and any it resumed)
        shorter = budget_horizon(done, time.monotonic() - t0, done - start_steps, cfg.max_minutes, horizon[0], world)
        if shorter < horizon[0]:
            log.info("time budget: the learning-rate schedule now ends at step %d (was %d)", shorter, horizon[0])
            horizon[0] = shorter
        improved = score > best
        if improved:
            best, best_epoch, bad = score, epoch + 1, 0
            if rank == 0:
                save_atomic({"model": model.state_dict(), "metrics": metrics}, best_path)
        else:
            bad += 1
        if rank == 0:
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad": bad,
                    "horizon": horizon[0],
                    "train_config": to_dict(cfg),
                    "model_config": to_dict(model.cfg),
                },
                ckpt_path,
            )
        if keep_last:
            log.info("epoch %d: loss %.4f (refit: not validated)", epoch + 1, running)
        else:
            log.info(
                "epoch %d: loss %.4f, valid %s=%.4f auc=%.4f%s",
                epoch + 1,
                running,
                cfg.select_metric,
                score,
                metrics["auc"],
                " (best)" if improved else "",
            )
        if bad >= cfg.patience:
            log.info("early stop: no improvement in %d epochs", bad)
            break
        if out_of_time or over_budget(t0, cfg.max_minutes, world):
            log.info("time budget of %.1f min spent; keeping the best epoch", cfg.max_minutes)
            break
    seconds = time.monotonic() - t0
    if world > 1:
        torch.distributed.barrier()  # rank 0 has written best.pt
    best_state = torch.load(best_path, weights_only=True, map_location="cpu")
    model.cpu()  # export, the served evaluation and the benchmarks run on the CPU, as the server does
    model.load_state_dict(best_state["model"])
    if rank == 0:
        plot_curve(history, run_dir / "learning_curve.png", cfg.select_metric)
    return FitResult(
        best_epoch,
        {k: float(v) for k, v in best_state["metrics"].items()},
        history,
        seconds,
        seen_examples * world / seconds if seconds else 0.0,  # all ranks' examples
    )


def plot_curve(history: list[dict[str, Any]], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history or "valid_auc" not in history[0]:  # a refit (`keep_last`) has no validation curve
        return
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax[0].set(title="training loss", xlabel="epoch")
    if f"valid_{metric}" in history[0] and metric != "auc":
        ax[1].plot(epochs, [h[f"valid_{metric}"] for h in history], marker="o", label=metric)
    ax[1].plot(epochs, [h["valid_auc"] for h in history], marker="s", label="auc")
    ax[1].set(title="validation", xlabel="epoch")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
