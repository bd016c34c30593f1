"""Click-log reading and validation: every problem names the file, column, row and fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.config import apply_overrides, from_dict
from recsys.data import _finish, load_log, read_log
from recsys.errors import DataValidationError, InvalidArgument
from recsys.model import ModelConfig
from recsys.vocab import PAD, UNK, Vocab


def write(tmp_path: Path, name: str, frame: pd.DataFrame) -> Path:
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


GOOD = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": [1, 2, 3], "timestamp": [5, 3, 7]})


@pytest.mark.parametrize(
    ("frame", "column", "row", "words"),
    [
        (GOOD.drop(columns="item_id"), "item_id", None, "missing column"),
        (GOOD.assign(user_id=["a", None, "b"]), "user_id", 2, "null or empty"),
        (GOOD.assign(item_id=["1", " ", "3"]), "item_id", 2, "null or empty"),
        (GOOD.assign(timestamp=[5, "yesterday", 7]), "timestamp", 2, "unparsable"),
        (GOOD.assign(timestamp=[5, 3, -7]), "timestamp", 3, "negative"),
        (GOOD.assign(event=["click", "teleport", "cart"]), "event", 2, "unknown event 'teleport'"),
        (GOOD.assign(label=[1, 0, 2]), "label", 3, "not 0 or 1"),
    ],
)
def test_log_problems_are_named(tmp_path: Path, frame, column, row, words) -> None:
    path = write(tmp_path, "log.csv", frame)
    with pytest.raises(DataValidationError) as err:
        load_log(path)
    msg = str(err.value)
    assert str(path) in msg and f"column {column!r}" in msg and words in msg and "fix:" in msg
    if row is not None:
        assert f"row {row}" in msg


def test_item_table_with_duplicate_ids_is_refused(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", GOOD)
    items = write(tmp_path, "items.csv", pd.DataFrame({"item_id": [1, 2, 2], "category": ["x", "y", "z"]}))
    with pytest.raises(DataValidationError, match=r"items.csv, column 'item_id', row 3: duplicate item_id '2'"):
        load_log(log, items)


def test_missing_file_and_bad_type(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="file not found"):
        load_log(tmp_path / "nope.csv")
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        load_log(tmp_path / "log.json")


def test_csv_and_parquet_read_the_same(tmp_path: Path) -> None:
    frame = GOOD.assign(timestamp=["2024-01-01T00:00:05Z", "1704067203", 1704067207], event=["click", "cart", ""])
    a = load_log(write(tmp_path, "log.csv", frame)).events
    b = load_log(write(tmp_path, "log.parquet", frame.astype(str))).events
    pd.testing.assert_frame_equal(a, b)
    assert list(a["timestamp"]) == [1704067203, 1704067205, 1704067207]  # sorted per user
    assert list(a["event"]) == ["cart", "click", "click"]


def test_log_without_timestamps_uses_file_order(tmp_path: Path) -> None:
    clog = load_log(write(tmp_path, "log.csv", GOOD.drop(columns="timestamp")))
    assert not clog.has_time
    assert list(clog.events["item_id"]) == ["1", "2", "3"]


def test_multi_valued_item_columns(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", GOOD)
    items = write(tmp_path, "items.csv", pd.DataFrame({"item_id": [1, 2], "genres": ["Action|Comedy", ""]}))
    clog = load_log(log, items)
    assert clog.items is not None and clog.items["genres"].tolist() == [("Action", "Comedy"), ()]


def test_vocab_reserves_padding_and_unknown_and_extends_stably() -> None:
    v = Vocab.build(["b", "a", "b", "c", "b", "a"])
    assert v.tokens[:2] == ["<pad>", "<unk>"] and v.tokens[2:] == ["b", "a", "c"]  # most frequent first
    assert list(v.lookup(["a", "zzz", "c"])) == [3, UNK, 4]
    assert PAD == 0 and "<pad>" not in v and "a" in v
    grown = v.extend(["d", "a", "e", "d"])
    assert grown.tokens[: len(v)] == v.tokens and grown.tokens[len(v) :] == ["d", "e"]


MIXED = pd.DataFrame(
    {
        "user_id": ["b", "a", "b", "c", "a", "b", "a", "c", "b"],
        "item_id": [9, 1, 8, 5, 2, 7, 3, 4, 6],
        "timestamp": [30, 10, 30, 50, 20, 10, 15, 40, 20],  # ties within a user keep file order
        "event": ["click", "cart", "click", "", "click", "purchase", "click", "click", "click"],
        "label": [1, 1, 0, 1, 1, 1, 1, 0, 1],
    }
)


@pytest.mark.parametrize("name", ["log.csv", "log.parquet"])
@pytest.mark.parametrize("with_time", [True, False])
@pytest.mark.parametrize("batch_rows", [1, 2, 4])
def test_reading_in_chunks_equals_reading_at_once(tmp_path: Path, name: str, with_time: bool, batch_rows: int) -> None:
    # contract: the chunk size never changes the result, even when a user's rows span chunks and the log
    # has no time (file order per user is then the time order, across chunks)
    frame = MIXED if with_time else MIXED.drop(columns="timestamp")
    path = write(tmp_path, name, frame)
    whole, has_time = read_log(path, batch_rows=10_000)
    chunked, chunked_time = read_log(path, batch_rows=batch_rows)
    assert has_time == chunked_time == with_time
    pd.testing.assert_frame_equal(chunked, whole)
    if not with_time:
        assert list(whole.loc[whole["user_id"] == "b", "item_id"]) == ["9", "8", "7", "6"]
        assert list(whole.loc[whole["user_id"] == "b", "timestamp"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["log.csv", "log.parquet"])
def test_errors_in_later_chunks_name_the_row_of_the_file(tmp_path: Path, name: str) -> None:
    frame = MIXED.assign(timestamp=MIXED["timestamp"].astype(str))
    frame.loc[6, "timestamp"] = "soon"  # data row 7
    path = write(tmp_path, name, frame)
    with pytest.raises(DataValidationError, match=r"column 'timestamp', row 7: unparsable timestamp 'soon'"):
        read_log(path, batch_rows=2)


def test_a_date_partitioned_parquet_directory_is_one_log(tmp_path: Path) -> None:
    # the layout `training export-events` writes: ROOT/date=YYYY-MM-DD/*.parquet
    root = tmp_path / "events"
    for day, rows in (("2026-11-27", MIXED.iloc[:5]), ("2026-11-28", MIXED.iloc[5:])):
        (root / f"date={day}").mkdir(parents=True)
        rows.to_parquet(root / f"date={day}" / "part-0.parquet", index=False)
    whole = load_log(write(tmp_path, "all.parquet", MIXED)).events
    pd.testing.assert_frame_equal(load_log(root).events, whole)
    pd.testing.assert_frame_equal(read_log(root, batch_rows=3)[0], whole)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=30))
def test_vocab_lookup_decode_round_trip(values: list[str]) -> None:
    v = Vocab.build(values)
    assert v.decode(v.lookup(values)) == [str(x) for x in values]
    assert np.all(v.lookup(values) >= 2)


def test_config_unknown_keys_and_bad_types_fail_loudly() -> None:
    with pytest.raises(InvalidArgument, match="unknown key"):
        from_dict(ModelConfig, {"n_items": 5, "n_layers": 2})
    with pytest.raises(InvalidArgument, match="expected int"):
        from_dict(ModelConfig, {"n_items": "five"})
    cfg = apply_overrides(ModelConfig(n_items=5), ["model.n_blocks=2", "model.mlp_dims=[64,32]", "train.x=1"], "model")
    assert cfg.n_blocks == 2 and cfg.mlp_dims == (64, 32)
    with pytest.raises(InvalidArgument, match="unknown key 'blocks'"):
        apply_overrides(ModelConfig(n_items=5), ["model.blocks=2"], "model")
    with pytest.raises(InvalidArgument, match="not allowed"):
        apply_overrides(ModelConfig(n_items=5), ["model.pooling=mean"], "model")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["u1", "u10", "u2", "ä", "Z", "u1 ", "é2"]), st.integers(0, 4)),
        min_size=1,
        max_size=60,
    ),
    st.lists(st.integers(0, 60), max_size=4),
    st.booleans(),
)
def test_finishing_a_read_column_by_column_equals_sorting_the_joined_frame(
    rows: list[tuple[str, int]], cuts: list[int], has_time: bool
) -> None:
    """`recsys.data._finish` joins a read's chunks and sorts them one column at a time (a read's memory
    peak; README, Large logs): the same rows, order and dtypes as joining the whole frames and sorting
    by user then time, stably (ties keep file order; without time, file order per user is the time)."""
    n = len(rows)
    frame = pd.DataFrame(
        {
            "user_id": pd.array([u for u, _ in rows], dtype="str"),
            "item_id": pd.array([f"i{k}" for k in range(n)], dtype="str"),
            "timestamp": np.array([t for _, t in rows], np.int64),
            "label": np.arange(n, dtype=np.int8) % 2,
        }
    )
    bounds = sorted({0, n, *(min(c, n) for c in cuts)})
    parts = [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    want = pd.concat(parts, ignore_index=True)
    if not has_time:
        want["timestamp"] = want.groupby("user_id", sort=False).cumcount().astype("int64")
    want = want.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(_finish([p.copy() for p in parts], has_time), want)
