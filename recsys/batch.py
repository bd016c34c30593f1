"""The data layer between raw ids and the model: vocabularies, side-feature tables, time buckets,
left-padded history windows. Training's collate and the server's request path both go through
`Featurizer.window`, so a history is encoded the same way offline and online.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys.data import ClickLog, split_multi
from recsys.errors import InvalidArgument
from recsys.features import Event, UserState
from recsys.model import History
from recsys.vocab import PAD, RESERVED, UNK, Vocab

TARGET_POSITION = 1  # position index of the target / candidate token; 0 is padding


def time_bucket(gap_seconds: np.ndarray, n_positions: int) -> np.ndarray:
    """Log-spaced buckets of the gap t(target) - t(behavior), two per octave of seconds:
    0 s -> 2, 1 min -> 13, 1 h -> 25, 1 day -> 31, 1 year -> 51; clipped to the vocabulary."""
    gap = np.maximum(gap_seconds, 0).astype(np.float64)
    return (2 + np.minimum(np.floor(2 * np.log2(1 + gap)), n_positions - 3)).astype(np.int64)


def context_features(ts: np.ndarray, has_time: bool) -> np.ndarray:
    """(B,) request times -> (B, 2): hour of day + 1 and day of week (Monday = 1) + 1; 0 without time."""
    if not has_time:
        return np.zeros((len(ts), 2), dtype=np.int64)
    ts = ts.astype(np.int64)
    hour = (ts // 3600) % 24 + 1
    weekday = ((ts // 86400) + 3) % 7 + 1  # 1970-01-01 was a Thursday
    return np.stack([hour, weekday], axis=1)


@dataclass
class Featurizer:
    """Vocabularies and tables that turn raw ids into model inputs. Saved in the artifact as JSON."""

    items: Vocab
    events: Vocab
    item_columns: tuple[str, ...]
    item_side: list[Vocab]  # one vocabulary per item column
    side_tables: list[np.ndarray]  # (n_items, width) per item column, PAD-filled
    user_columns: tuple[str, ...]
    user_side: list[Vocab]
    has_time: bool
    position: str  # "time" | "ordinal"
    n_positions: int
    window_len: int  # behaviors kept per history (the retrieval encoder's length)

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        clog: ClickLog,
        window_len: int,
        n_positions: int,
        max_side_width: int = 8,
        position: str | None = None,
        base: Featurizer | None = None,
    ) -> Featurizer:
        """Vocabularies of `clog`. With `base` (a retrain's warm start) they grow from base's instead:
        every existing index is kept, new ids are appended, an item's side-feature row is its newest
        (the log's item table, else base's), and the item and profile columns must be base's."""
        ev = clog.events
        item_ids = ev["item_id"] if clog.items is None else pd.concat([ev["item_id"], clog.items["item_id"]])
        items = Vocab.build(item_ids) if base is None else base.items.extend(Vocab.build(item_ids).tokens[2:])
        names = sorted(str(e) for e in ev["event"].unique())
        events = Vocab([*RESERVED, *names]) if base is None else base.events.extend(names)
        item_cols = [c for c in clog.items.columns if c != "item_id"] if clog.items is not None else []
        user_cols = [c for c in clog.users.columns if c != "user_id"] if clog.users is not None else []
        if base is not None:
            for kind, got, want in (("item", item_cols, base.item_columns), ("user", user_cols, base.user_columns)):
                if got and tuple(got) != tuple(want):
                    raise InvalidArgument(
                        f"the new {kind} table's columns {got} differ from the model's {list(want)}; fix: pass a "
                        f"table with exactly those columns, or train from scratch (python -m training fit)"
                    )
            item_cols, user_cols = list(base.item_columns), list(base.user_columns)
        columns, side_vocabs, tables = [], [], []
        for j, col in enumerate(item_cols):
            cells = clog.items[col] if clog.items is not None else pd.Series([], dtype=object)
            fresh = Vocab.build(v for cell in cells for v in cell)
            if base is None:
                vocab = fresh
                width = int(min(max_side_width, max(1, cells.map(len).max())))
                table = np.zeros((len(items), width), dtype=np.int64)
            else:
                vocab = base.item_side[j].extend(fresh.tokens[2:])
                old = base.side_tables[j]
                width = old.shape[1]
                table = np.zeros((len(items), width), dtype=np.int64)
                table[: len(old)] = old
            if clog.items is not None:
                rows = items.lookup(clog.items["item_id"])
                for r, cell in zip(rows, cells, strict=True):
                    if cell:
                        idx = vocab.lookup(list(cell[:width]))
                        table[r] = 0
                        table[r, : len(idx)] = idx
            columns.append(col)
            side_vocabs.append(vocab)
            tables.append(table)
        user_columns, user_vocabs = [], []
        for j, col in enumerate(user_cols):
            values = [v for v in clog.users[col] if v] if clog.users is not None else []
            user_columns.append(col)
            user_vocabs.append(Vocab.build(values) if base is None else base.user_side[j].extend(values))
        if base is not None:
            position, n_positions, window_len = base.position, base.n_positions, base.window_len
        return cls(
            items=items,
            events=events,
            item_columns=tuple(columns),
            item_side=side_vocabs,
            side_tables=tables,
            user_columns=tuple(user_columns),
            user_side=user_vocabs,
            has_time=clog.has_time,
            position=position or ("time" if clog.has_time else "ordinal"),
            n_positions=n_positions,
            window_len=window_len,
        )

    def model_sizes(self) -> dict[str, Any]:
        """The ModelConfig fields that come from the vocabularies."""
        return {
            "n_items": len(self.items),
            "side_sizes": tuple(len(v) for v in self.item_side),
            "side_widths": tuple(t.shape[1] for t in self.side_tables),
            "user_sizes": tuple(len(v) for v in self.user_side),
            "n_events": len(self.events),
            "position": self.position,
            "n_positions": self.n_positions,
        }

    def side_rows(self, features: Sequence[Mapping[str, str]]) -> list[np.ndarray]:
        """Side-feature rows for items outside the vocabulary, from raw feature maps such as the
        feature store keeps (`{"category": "Action|Comedy", ...}`; multi-valued cells `|`-separated):
        one (n, width) array per item column, PAD where absent, UNK for values never seen in training."""
        out = []
        for col, vocab, table in zip(self.item_columns, self.item_side, self.side_tables, strict=True):
            rows = np.zeros((len(features), table.shape[1]), dtype=np.int64)
            for r, feats in enumerate(features):
                values = split_multi(feats.get(col, ""))[: table.shape[1]]
                if values:
                    rows[r, : len(values)] = vocab.lookup(list(values))
            out.append(rows)
        return out

    def side_buffers(self) -> dict[str, torch.Tensor]:
        """The item -> side-feature tables, as the model's buffers."""
        return {f"items.side_table_{j}": torch.from_numpy(t) for j, t in enumerate(self.side_tables)}

    def user_features(self, users: pd.DataFrame | None, user_ids: Sequence[str]) -> np.ndarray:
        """(n, U) profile indices for raw user ids (unknown users and values -> UNK)."""
        out = np.full((len(user_ids), len(self.user_columns)), UNK, dtype=np.int64)
        if users is None or not self.user_columns:
            return out
        table = users.set_index("user_id").reindex(pd.Index(user_ids))
        for j, (col, vocab) in enumerate(zip(self.user_columns, self.user_side, strict=True)):
            out[:, j] = vocab.lookup(table[col].fillna("").to_numpy())
        return out

    def profile_features(self, profile: dict[str, str] | Any) -> np.ndarray:
        return np.array(
            [
                v.index(profile[c]) if c in profile else UNK
                for c, v in zip(self.user_columns, self.user_side, strict=True)
            ],
            dtype=np.int64,
        )

    # -- windows ---------------------------------------------------------------------------------

    def window(
        self,
        items: np.ndarray,
        times: np.ndarray,
        events: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        request_time: np.ndarray,
        user: np.ndarray,
    ) -> History:
        """Histories as model inputs. `items/times/events` are flat per-behavior arrays; row b's history
        is flat[starts[b]:ends[b]] (time order), of which the newest `window_len` are kept, left-padded.
        `request_time` (B,) is the target's time (training) or the request's time (serving)."""
        T = self.window_len
        idx = ends[:, None] - T + np.arange(T)[None, :]  # (B, T) flat indices, newest last
        valid = idx >= starts[:, None]
        safe = np.where(valid, idx, 0)
        it = np.where(valid, items[safe], PAD) if len(items) else np.zeros(idx.shape, np.int64)
        ev = np.where(valid, events[safe], PAD) if len(items) else np.zeros(idx.shape, np.int64)
        if self.position == "time" and self.has_time:
            gap = request_time[:, None] - (times[safe] if len(items) else 0)
            pos = time_bucket(gap, self.n_positions)
        else:
            steps = T - np.arange(T)[None, :].repeat(len(ends), 0)  # 1 for the newest
            pos = np.minimum(1 + steps, self.n_positions - 1)
        pos = np.where(valid, pos, PAD)
        ctx = context_features(request_time, self.has_time)
        t = torch.from_numpy
        return History(
            t(it.astype(np.int64)),
            t(pos.astype(np.int64)),
            t(ev.astype(np.int64)),
            t(user.astype(np.int64)),
            t(ctx.astype(np.int64)),
        )

    def encode_states(self, states: Sequence[UserState], now: float | np.ndarray) -> History:
        """Histories of users as served (raw events from the feature store) -> model inputs.
        Items the model does not know map to the unknown slot; the newest `window_len` are kept."""
        flat: list[Event] = []
        starts, ends = [], []
        for s in states:
            starts.append(len(flat))
            flat.extend(s.history[-self.window_len :])
            ends.append(len(flat))
        items = self.items.lookup([e.item_id for e in flat]) if flat else np.zeros(0, np.int64)
        events = self.events.lookup([e.event for e in flat]) if flat else np.zeros(0, np.int64)
        times = np.array([e.timestamp for e in flat], dtype=np.int64)
        user = np.stack([self.profile_features(s.profile) for s in states]) if states else np.zeros((0, 0), np.int64)
        req = np.broadcast_to(np.asarray(now, dtype=np.float64), (len(states),)).astype(np.int64)
        return self.window(
            items,
            times,
            events,
            np.array(starts),
            np.array(ends),
            req,
            user.reshape(len(states), len(self.user_columns)),
        )

    # -- persistence -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items.tokens,
            "events": self.events.tokens,
            "item_columns": list(self.item_columns),
            "item_side": [v.tokens for v in self.item_side],
            "user_columns": list(self.user_columns),
            "user_side": [v.tokens for v in self.user_side],
            "has_time": self.has_time,
            "position": self.position,
            "n_positions": self.n_positions,
            "window_len": self.window_len,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], side_tables: list[np.ndarray]) -> Featurizer:
        """`side_tables` come from the weights file (they are the model's buffers), not the JSON."""
        return cls(
            items=Vocab(data["items"]),
            events=Vocab(data["events"]),
            item_columns=tuple(data["item_columns"]),
            item_side=[Vocab(t) for t in data["item_side"]],
            side_tables=side_tables,
            user_columns=tuple(data["user_columns"]),
            user_side=[Vocab(t) for t in data["user_side"]],
            has_time=bool(data["has_time"]),
            position=str(data["position"]),
            n_positions=int(data["n_positions"]),
            window_len=int(data["window_len"]),
        )
