"""Click logs as training data: per-user positive sequences, leakage-free splits, CTR examples.

Every example is (user row, end, target, label, time): its history is the user's positives
flat[start:end], all strictly earlier than the target in the log's time order.

Leave-one-out (the SASRec / BERT4Rec / HSTU protocol): per user with >= 3 positives, the last positive
is test, the one before it validation, the rest train. Users with fewer positives train only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from recsys.batch import Featurizer
from recsys.data import ClickLog
from recsys.index import FIRST_ITEM
from recsys.model import BST, History


@dataclass
class Examples:
    user: np.ndarray  # (n,) user row
    end: np.ndarray  # (n,) history is flat[start[user]:end]
    target: np.ndarray  # (n,) item index
    label: np.ndarray  # (n,) float32 1/0
    time: np.ndarray  # (n,) request time (the target's timestamp)
    listwise: np.ndarray | None = None  # (n,) bool: a positive whose group enters the listwise loss (None: all)

    FIELDS = ("user", "end", "target", "label", "time", "listwise")

    def __post_init__(self) -> None:
        if self.listwise is None:
            self.listwise = np.ones(len(self.user), bool)

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples(*(getattr(self, f)[rows] for f in self.FIELDS))

    def history_keys(self) -> np.ndarray:
        """(n,) int64 keys ordered as (user, history end) and equal exactly where both are."""
        return self.user.astype(np.int64) * (int(self.end.max(initial=0)) + 1) + self.end

    def history_groups(self) -> np.ndarray:
        """(n,) ids in [0, groups): rows with the same history (user and history end: a positive and its
        sampled and mined negatives) share one."""
        return dense_ranks(self.history_keys())

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        """The parts' rows in order. A single non-empty part is returned as it is, not copied (the training
        split of a log without shown-not-clicked rows: a copy doubled the peak of `leave_one_out`)."""
        filled = [p for p in parts if len(p)]
        if len(filled) == 1:
            return filled[0]
        return Examples(*(np.concatenate([getattr(p, f) for p in parts]) for f in Examples.FIELDS))


@dataclass
class Epoch:
    """One epoch's training rows, holding only what is not in the training split: row r is `base` row
    `src[r]` (its user, history end and time) with its own target, label and listwise flag. A sampled
    or mined negative repeats its positive's row, so a row costs 10 bytes here (with 32-bit indices)
    where a materialised `Examples` row costs 37, and no part is copied to be concatenated (README,
    Large logs). `subset` materialises a step's rows; they equal those of the concatenated `Examples`
    the epoch was built as before (tests/test_baselines.py holds the two equal)."""

    base: Examples
    src: np.ndarray  # (n,) rows of base
    target: np.ndarray  # (n,) item index
    positive: np.ndarray  # (n,) bool: label 1
    listwise: np.ndarray  # (n,) bool, as `Examples.listwise`

    def __len__(self) -> int:
        return len(self.src)

    @property
    def user(self) -> np.ndarray:
        return self.base.user[self.src]

    @property
    def end(self) -> np.ndarray:
        return self.base.end[self.src]

    @property
    def time(self) -> np.ndarray:
        return self.base.time[self.src]

    @property
    def label(self) -> np.ndarray:
        return self.positive.astype(np.float32)

    def subset(self, rows: np.ndarray) -> Examples:
        src = self.src[rows]
        b = self.base
        target, label = self.target[rows].astype(np.int64), self.positive[rows].astype(np.float32)
        return Examples(b.user[src], b.end[src], target, label, b.time[src], self.listwise[rows])

    def history_groups(self) -> np.ndarray:
        """As `Examples.history_groups` (the same ids: both rank the distinct (user, end) pairs). The base
        rows are ranked, then gathered: ranking the epoch's own keys, twice as many or more with its
        negatives, was where a fit's memory peaked (README, Large logs). A base history no row of the
        epoch uses would leave a gap, so the ids are made dense again. In the narrowest integer type."""
        base = self.base.history_groups()
        ids = narrow(base, len(base))[self.src]
        del base
        present = np.zeros(int(ids.max(initial=-1)) + 1, bool)
        present[ids] = True
        if present.all():
            return ids
        dense = np.cumsum(present, dtype=ids.dtype)  # fewer groups present than base rows: it fits
        dense -= 1
        return dense[ids]


def narrow(indices: np.ndarray, n: int) -> np.ndarray:
    """`indices` (values in [0, n)) in the narrowest of int8, int16, int32 and int64 that holds them: the
    flat per-event arrays (item, event type) and the training split's rows (user, history end, target)
    grow with the log, and every consumer widens a step's rows to int64 for torch (README, Large logs)."""
    for dtype in (np.int8, np.int16, np.int32):
        if n <= np.iinfo(dtype).max + 1:
            return indices.astype(dtype, copy=False)
    return indices.astype(np.int64, copy=False)


def dense_ranks(key: np.ndarray) -> np.ndarray:
    """(n,) int64: each key's index among the sorted distinct keys, as `np.unique(key,
    return_inverse=True)[1]`, with at most four arrays of the key's length alive at once (the key, the
    sort order, the ranks, the result) where numpy 2.4's keeps up to seven (a flattened copy, the sort
    order, the sorted copy, the distinct keys, two cumulative sums, the result). It runs on a whole
    epoch's rows as training starts, where the fit's memory peaks (README, Large logs)."""
    order = np.argsort(key)
    sorted_key = key[order]
    new = np.empty(len(key), bool)
    new[:1] = True
    np.not_equal(sorted_key[1:], sorted_key[:-1], out=new[1:])
    del sorted_key
    ids = np.cumsum(new, dtype=np.int64)
    del new
    ids -= 1
    out = np.empty(len(key), np.int64)
    out[order] = ids
    return out


@dataclass
class EncodedLog:
    """The positives of every user, flat and time-ordered, plus what is needed to build examples."""

    featurizer: Featurizer
    user_ids: np.ndarray  # (U,) raw ids, row order
    start: np.ndarray  # (U,) first flat index of each user
    stop: np.ndarray  # (U,) one past the last
    items: np.ndarray  # (P,) flat item indices
    times: np.ndarray  # (P,) flat timestamps
    events: np.ndarray  # (P,) flat event indices
    user_features: np.ndarray  # (U, n_profile_columns)
    negatives: Examples  # real shown-not-clicked rows (label 0), with their histories
    popularity: np.ndarray  # (n_items,) counts of all positives; `Split.popularity` counts training only
    profiles: dict[str, dict[str, str]]  # raw profile columns per raw user id (what a store holds)

    @classmethod
    def build(cls, clog: ClickLog, featurizer: Featurizer) -> EncodedLog:
        ev = clog.events
        label = ev["label"].to_numpy()
        is_pos = label == 1
        pos = ev if is_pos.all() else ev[is_pos]  # a log of clicks alone is not copied
        user_ids = np.array(sorted(pos["user_id"].unique()), dtype=object)
        row_of = pd.Index(user_ids)
        codes, uniques = pd.factorize(pos["user_id"])  # each distinct user located once, then gathered
        urow = row_of.get_indexer(uniques)[codes]
        counts = np.bincount(urow, minlength=len(user_ids))
        stop = np.cumsum(counts)
        start = stop - counts
        # the columns go to `lookup` as Series: each distinct id is probed once (arrow factorize), where
        # `.to_numpy()` made a Python string object of every row first
        items = narrow(featurizer.items.lookup(pos["item_id"]), len(featurizer.items))
        times = pos["timestamp"].to_numpy().astype(np.int64)
        events = narrow(featurizer.events.lookup(pos["event"]), len(featurizer.events))
        neg = ev[(label == 0) & ev["user_id"].isin(row_of).to_numpy()]
        codes, uniques = pd.factorize(neg["user_id"])
        nrow = row_of.get_indexer(uniques)[codes].astype(np.int64)
        ntime = neg["timestamp"].to_numpy().astype(np.int64)
        # history of a shown-not-clicked row: the user's positives strictly before it
        nend = np.array(
            [
                start[u] + np.searchsorted(times[start[u] : stop[u]], t, side="left")
                for u, t in zip(nrow, ntime, strict=True)
            ],
            dtype=np.int64,
        )
        negatives = Examples(nrow, nend, featurizer.items.lookup(neg["item_id"]), np.zeros(len(neg), np.float32), ntime)
        profiles = (
            {}
            if clog.users is None
            else {
                str(r["user_id"]): {k: v for k, v in r.items() if k != "user_id" and v}
                for r in clog.users.to_dict("records")
            }
        )
        return cls(
            featurizer,
            user_ids,
            start,
            stop,
            items,
            times,
            events,
            featurizer.user_features(clog.users, list(user_ids)),
            negatives,
            np.bincount(items, minlength=len(featurizer.items)),
            profiles,
        )

    @property
    def n_items(self) -> int:
        return len(self.featurizer.items)

    def positives(self, rows: np.ndarray) -> Examples:
        """Positive examples for flat positions `rows` (each must have >= 1 earlier positive)."""
        u = narrow(np.searchsorted(self.stop, rows, side="right"), len(self.start))
        rows = narrow(rows, len(self.items) + 1)  # an end is at most len(items)
        return Examples(u, rows, self.items[rows], np.ones(len(rows), np.float32), self.times[rows])

    def batch(self, ex: Examples, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for examples: the History fields plus target and label (on `device`, if given)."""
        hist = self.featurizer.window(
            self.items, self.times, self.events, self.start[ex.user], ex.end, ex.time, self.user_features[ex.user]
        )
        out = dict(zip(History._fields, hist, strict=True))
        out["target"] = torch.from_numpy(ex.target.astype(np.int64))
        out["label"] = torch.from_numpy(ex.label.astype(np.float32))
        return to_device(trim(out), device)

    def seed_table(self, max_history: int) -> pa.Table:
        """Each user's newest `max_history` positives (raw ids) and profile, for the artifact: columns
        user_id, items (list of ids), timestamps (list), events (list), profile (JSON), a row a user.

        Built as Arrow arrays from the encoded ones, not as a Python list of ids per user: that frame held
        the whole log as Python objects at export (about 1 GiB at 20 million events, the fit's peak after
        training; README, Large logs)."""
        lo = np.maximum(self.start, self.stop - max_history)
        lengths = self.stop - lo
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.arange(offsets[-1], dtype=np.int64) + np.repeat(lo - offsets[:-1], lengths)  # log positions
        offsets_type = pa.int32() if offsets[-1] < 2**31 else pa.int64()
        list_type = pa.ListArray if offsets_type == pa.int32() else pa.LargeListArray

        def lists(values: pa.Array) -> pa.Array:
            return list_type.from_arrays(pa.array(offsets, offsets_type), values)

        def names(tokens: list[str], indices: np.ndarray) -> pa.Array:
            return pa.array(tokens, pa.string()).take(pa.array(indices[flat]))

        return pa.table(
            {
                "user_id": pa.array([str(u) for u in self.user_ids], pa.string()),
                "items": lists(names(self.featurizer.items.tokens, self.items)),
                "timestamps": lists(pa.array(self.times[flat], pa.int64())),
                "events": lists(names(self.featurizer.events.tokens, self.events)),
                "profile": pa.array([json.dumps(self.profiles.get(str(u), {})) for u in self.user_ids], pa.string()),
            }
        )


def to_device(batch: dict[str, torch.Tensor], device: torch.device | None) -> dict[str, torch.Tensor]:
    """The batch on `device` (None or the CPU: unchanged; the data layer builds batches on the CPU)."""
    if device is None or device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters are (`train.device` during `fit`, the CPU after it)."""
    return next(model.parameters()).device


def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the leading all-padding columns of a left-padded batch (the model accepts any T)."""
    items = batch["items"]
    filled = (items > 0).any(0).nonzero()
    first = int(filled[0]) if len(filled) else items.shape[1] - 1
    if first == 0:
        return batch
    return {k: v[:, first:] if v.dim() == 2 and v.shape == items.shape else v for k, v in batch.items()}


@dataclass
class Split:
    train: Examples  # positives (and real negatives) for training
    valid: Examples  # held-out positives (validation)
    test: Examples  # held-out positives (test)
    popularity: np.ndarray  # (n_items,) training positives per item: no held-out click counts


def leave_one_out(data: EncodedLog) -> Split:
    n = data.stop - data.start
    held = n >= 3
    test_rows = data.stop[held] - 1
    valid_rows = data.stop[held] - 2
    is_heldout = np.zeros(len(data.items), bool)
    is_heldout[test_rows] = True
    is_heldout[valid_rows] = True
    first = np.zeros(len(data.items), bool)
    first[data.start] = True
    train_rows = np.flatnonzero(~is_heldout & ~first)
    neg = data.negatives
    # a real negative trains only if its history ends before the user's held-out positives
    limit = np.where(held, data.stop - 2, data.stop)[neg.user]
    train_neg = neg.subset(np.flatnonzero((neg.end <= limit) & (neg.end > data.start[neg.user])))
    popularity = np.bincount(data.items[~is_heldout], minlength=data.n_items)  # first clicks included
    return Split(
        Examples.concat([data.positives(train_rows), train_neg]),
        data.positives(valid_rows),
        data.positives(test_rows),
        popularity,
    )


def with_validation(split: Split) -> Split:
    """The split a refit trains on (`train.refit`): the validation positives join the training ones and
    count in the popularity; test stays held out. `valid` is kept, but a refit never evaluates it (it is
    trained on), so nothing is selected on it."""
    valid = split.valid
    popularity = split.popularity + np.bincount(valid.target, minlength=len(split.popularity))
    return Split(Examples.concat([split.train, valid]), valid, split.test, popularity)


def time_split(data: EncodedLog, cutoff: float) -> Split:
    """A global time split: every positive at or after `cutoff` is test (with all its earlier positives
    as history); per user with >= 3 positives before it, the last of those is validation; the rest
    train. Real negatives train only when their history ends before the user's validation positive."""
    n_users = len(data.start)
    flat_user = np.repeat(np.arange(n_users), data.stop - data.start)
    before = data.times < cutoff
    n_before = np.bincount(flat_user[before], minlength=n_users)  # positives are time-ordered per user
    has_valid = n_before >= 3
    valid_rows = (data.start + n_before - 1)[has_valid]
    first = np.zeros(len(data.items), bool)
    first[data.start] = True
    is_valid = np.zeros(len(data.items), bool)
    is_valid[valid_rows] = True
    train_rows = np.flatnonzero(before & ~first & ~is_valid)
    test_rows = np.flatnonzero(~before & ~first)
    neg = data.negatives
    limit = np.where(has_valid, data.start + n_before - 1, data.start + n_before)[neg.user]
    keep = (neg.end <= limit) & (neg.end > data.start[neg.user]) & (neg.time < cutoff)
    popularity = np.bincount(data.items[before & ~is_valid], minlength=data.n_items)
    return Split(
        Examples.concat([data.positives(train_rows), neg.subset(np.flatnonzero(keep))]),
        data.positives(valid_rows),
        data.positives(test_rows),
        popularity,
    )


@dataclass
class Windows:
    """Next-item training windows, SASRec-style: each user's training positives once per epoch, cut into
    left-padded windows of the encoder's length. `inputs[w, t]` predicts `targets[w, t]` (0 = no loss).
    Every training pair (earlier positives -> next positive) has its loss in exactly one window, with at
    least `length // 2` earlier positives as context where the user has them."""

    inputs: np.ndarray  # (W, L) item indices, left-padded with 0
    targets: np.ndarray  # (W, L) the next item at each position, 0 where no loss is taken

    def __len__(self) -> int:
        return len(self.inputs)


def next_item_windows(data: EncodedLog, train: Examples, length: int) -> Windows:
    """Windows over each user's positives up to their newest training positive (`train`'s positive rows:
    held-out positives never enter). Windows end every `length // 2` pairs from the newest backwards;
    each takes its loss on its newest half (the oldest window on all of it), so no pair is counted twice.

    The windows are counted first and written into two preallocated arrays of the item indices' width
    (int32 below 2^31 items; the collate widens a step's rows): at 20 million events, stacking a list
    of per-window arrays held about twice the result's memory at once."""
    pos = train.label > 0.5
    last = np.full(len(data.start), -1, dtype=np.int64)
    np.maximum.at(last, train.user[pos], train.end[pos])
    half = max(1, length // 2)
    users = np.flatnonzero(last >= 0)
    pairs = last[users] - data.start[users]  # pairs seq[t] -> seq[t + 1] of each user
    # a user with m pairs: one window if m <= length, else one more for every `half` pairs beyond it
    count = np.where(pairs > length, 1 + -(-(pairs - length) // half), (pairs > 0).astype(np.int64))
    dtype = np.int32 if data.n_items < 2**31 else np.int64
    n_windows = int(count.sum())
    inputs = np.zeros((n_windows, length), dtype)
    targets = np.zeros((n_windows, length), dtype)
    w = 0
    for u, m in zip(users.tolist(), pairs.tolist(), strict=True):
        seq = data.items[data.start[u] : last[u] + 1]
        end = m
        while end > 0:
            lo = max(0, end - length)
            inputs[w, length - (end - lo) :] = seq[lo:end]
            targets[w, length - (end - lo) :] = seq[lo + 1 : end + 1]
            if lo > 0:  # context-only positions: their pairs are taken by an older window
                targets[w, : length - half] = 0
            w += 1
            end = end - half if lo > 0 else 0
    assert w == n_windows, f"{w} windows written, {n_windows} counted"
    return Windows(inputs, targets)


def negative_items(
    data: EncodedLog,
    targets: np.ndarray,
    n: int,
    rng: np.random.Generator,
    how: str = "uniform",
    popularity: np.ndarray | None = None,
) -> np.ndarray:
    """(len(targets) * n,) int64 items, `n` a target in a row, each != its target: the negatives'
    items of `sample_negatives`, drawn from `rng` the same way."""
    reps = targets if n == 1 else np.repeat(targets, n)
    if how == "popularity":
        counts = data.popularity if popularity is None else popularity
        p = counts[FIRST_ITEM:].astype(np.float64) + 1.0
        draw = rng.choice(len(p), size=len(reps), p=p / p.sum()) + FIRST_ITEM
    else:
        draw = rng.integers(FIRST_ITEM, data.n_items, size=len(reps))
    clash = draw == reps
    draw[clash] = FIRST_ITEM + (draw[clash] - FIRST_ITEM + 1) % (data.n_items - FIRST_ITEM)
    return draw.astype(np.int64, copy=False)


def sample_negatives(
    data: EncodedLog,
    pos: Examples,
    n: int,
    rng: np.random.Generator,
    how: str = "uniform",
    popularity: np.ndarray | None = None,
) -> Examples:
    """`n` sampled negatives per positive, same history and time, target != the positive's item."""
    if n <= 0 or len(pos) == 0:
        return pos.subset(np.zeros(0, np.int64))
    reps = pos if n == 1 else pos.subset(np.repeat(np.arange(len(pos)), n))  # (arrays are never written to)
    draw = negative_items(data, pos.target, n, rng, how, popularity)
    return Examples(reps.user, reps.end, draw, np.zeros(len(reps), np.float32), reps.time)


def mine_hard_negatives(
    model: BST, data: EncodedLog, pos: Examples, n: int, pool: int, rng: np.random.Generator, batch_size: int = 1024
) -> tuple[Examples, np.ndarray]:
    """`n` negatives per positive drawn uniformly from the retrieval head's top-`pool` items for its
    history (seen items and the target excluded): the candidates the ranker faces when served. Also
    returns, per positive, whether its target is itself among the top `pool` (the served ranker only
    ever orders such lists). (negatives, in_pool (len(pos),) bool)."""
    if n <= 0 or len(pos) == 0:
        return pos.subset(np.zeros(0, np.int64)), np.zeros(len(pos), bool)
    items, in_pool = hard_negative_items(model, data, pos, n, pool, rng, batch_size)
    reps = pos.subset(np.repeat(np.arange(len(pos)), n))
    return Examples(reps.user, reps.end, items, np.zeros(len(reps), np.float32), reps.time), in_pool


@torch.inference_mode()
def hard_negative_items(
    model: BST, data: EncodedLog, pos: Examples, n: int, pool: int, rng: np.random.Generator, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The items of `mine_hard_negatives`' negatives ((len(pos) * n,) int64, `n` a positive in a row)
    and its `in_pool`, for `n` >= 1 and at least one positive."""
    was_training = model.training
    model.eval()
    vectors = model.item_vectors()  # (N, d)
    pool = min(pool, data.n_items - FIRST_ITEM - 1)
    draws, in_pool = [], []
    for lo in range(0, len(pos), batch_size):
        part = pos.subset(np.arange(lo, min(len(pos), lo + batch_size)))
        batch = data.batch(part, model_device(model))
        scores = model.encode_user(History(*(batch[f] for f in History._fields))) @ vectors.T  # (B, N)
        scores[:, :FIRST_ITEM] = float("-inf")
        scores.scatter_(1, batch["items"], float("-inf"))  # the (windowed) history
        target = scores.gather(1, batch["target"].unsqueeze(1))  # (B, 1)
        in_pool.append(((scores > target).sum(1) < pool).cpu().numpy())  # the target's rank among unseen items
        scores.scatter_(1, batch["target"].unsqueeze(1), float("-inf"))
        top = scores.topk(pool, dim=1).indices.cpu().numpy()  # (B, pool)
        cols = rng.integers(0, pool, size=(len(part), n))
        draws.append(np.take_along_axis(top, cols, axis=1))
    model.train(was_training)
    return np.concatenate(draws).reshape(-1).astype(np.int64), np.concatenate(in_pool)
