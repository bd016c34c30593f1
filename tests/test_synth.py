"""training.synth: deterministic, schema-true, and its planted sequential structure is measurable.

The structure checks are oracle-free: they only use the log, the way a model would. A first-order
item-transition model (bigram counts learned on all but each user's last click) must beat
most-popular clearly on the held-out last click, and it must do much better when the last click
came within the session (short gap) than after a session boundary (long gap).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import pytest

from training import synth
from training.synth import SynthConfig, generate

K = 10
SMALL = SynthConfig(n_users=400, n_items=400, n_categories=10, events_per_user=30.0)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return generate(SMALL)


def _clicks(log: pd.DataFrame) -> pd.DataFrame:
    return log[log["event"] == "click"]


def _holdout_hits(log: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: (bigram hit@K, most-popular hit@K, gap in seconds) on the last click.

    Both models learn on all clicks but each user's last one. The bigram ranks the successors of the
    user's previous click by count (ties by id) and fills up with most-popular.
    """
    clicks = _clicks(log)
    last = clicks.groupby("user_id").tail(1)
    train = clicks.drop(last.index)
    popular = train["item_id"].value_counts().index[:K].tolist()
    prev = train.groupby("user_id").tail(1).set_index("user_id")
    pairs = pd.DataFrame({"a": train["item_id"], "b": train.groupby("user_id")["item_id"].shift(-1)})
    counts = pairs.dropna().value_counts().reset_index()
    counts = counts.sort_values(["a", "count", "b"], ascending=[True, False, True])
    following = counts.groupby("a")["b"].agg(lambda s: s.tolist()[:K]).to_dict()

    bigram_hit, popular_hit, gap = [], [], []
    for user, item, ts in zip(last["user_id"], last["item_id"], last["timestamp"], strict=True):
        ranked = following.get(prev.at[user, "item_id"], [])
        ranked = (ranked + [p for p in popular if p not in ranked])[:K]
        bigram_hit.append(item in ranked)
        popular_hit.append(item in popular)
        gap.append(ts - prev.at[user, "timestamp"])
    return np.array(bigram_hit), np.array(popular_hit), np.array(gap)


# --- determinism


def test_same_seed_same_frames(frames):
    for a, b in zip(frames, generate(SMALL), strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_different_seeds_differ(frames):
    other = generate(dataclasses.replace(SMALL, seed=1))
    assert not frames[0].equals(other[0])
    assert not frames[1].equals(other[1])


# --- schema


def test_schema(frames):
    log, items, users = frames
    assert list(log.columns) == list(synth.LOG_COLUMNS)
    assert list(items.columns) == list(synth.ITEM_COLUMNS)
    assert list(users.columns) == list(synth.USER_COLUMNS)
    for frame in frames:
        assert not frame.isna().any().any()
    for col in ("user_id", "item_id", "event"):
        assert pd.api.types.is_string_dtype(log[col])
    assert log["timestamp"].dtype == np.int64
    assert log["label"].dtype == np.int64
    assert log["user_id"].str.fullmatch(r"u\d{5}").all()
    assert log["item_id"].str.fullmatch(r"i\d{5}").all()
    assert items["category"].str.fullmatch(r"c\d{2}").all()
    assert set(log["event"]) == {"click", "cart", "purchase", "impression"}
    assert set(users["age_band"]) <= set(synth.AGE_BANDS)
    assert set(users["gender"]) <= set(synth.GENDERS)
    assert items["item_id"].is_unique and users["user_id"].is_unique
    assert set(log["item_id"]) <= set(items["item_id"])
    assert set(log["user_id"]) == set(users["user_id"])
    assert items["category"].nunique() == SMALL.n_categories


def test_sorted_by_user_then_time(frames):
    log = frames[0]
    assert (log["timestamp"] >= 0).all()
    assert log["user_id"].is_monotonic_increasing
    assert (log.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()


def test_clicks_per_user(frames):
    n = _clicks(frames[0]).groupby("user_id").size()
    assert n.min() >= SMALL.min_events_per_user
    assert n.std() > 0
    assert abs(n.mean() - SMALL.events_per_user) < 0.15 * SMALL.events_per_user


def test_impressions_are_unclicked_items_shown_with_a_click(frames):
    log = frames[0]
    labels = log.groupby("event")["label"].unique()
    assert [list(labels[e]) for e in ("impression", "click", "cart", "purchase")] == [[0], [1], [1], [1]]
    impressions = log[log["event"] == "impression"]
    assert len(impressions) > 0.1 * len(_clicks(log))
    shown_with = impressions.merge(_clicks(log), on=["user_id", "timestamp"], suffixes=("", "_click"))
    assert len(shown_with) == len(impressions)  # every impression shares a click's timestamp
    assert (shown_with["item_id"] != shown_with["item_id_click"]).all()


def test_cart_and_purchase_follow_a_click_on_the_same_item(frames):
    log = frames[0]
    for event in ("cart", "purchase"):
        rows = log[log["event"] == event]
        assert 0 < len(rows) < 0.1 * len(log)
        prior = rows.merge(_clicks(log), on=["user_id", "item_id"], suffixes=("", "_click"))
        prior = prior[prior["timestamp_click"] <= prior["timestamp"]]
        assert prior[["user_id", "item_id", "timestamp"]].drop_duplicates().shape[0] == len(rows)


def test_profiles_and_brands_are_correlated_with_categories(frames):
    _, items, users = frames
    # A brand's items mostly sit in its home category (uncorrelated: ~1 / n_categories plus noise).
    home_share = items.groupby("brand")["category"].agg(lambda s: s.value_counts().iloc[0] / len(s))
    assert home_share.mean() > 0.6
    assert users["gender"].nunique() == 2 and users["age_band"].nunique() == len(synth.AGE_BANDS)


# --- planted structure


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bigram_beats_most_popular(seed):
    bigram, popular, _ = _holdout_hits(generate(dataclasses.replace(SMALL, seed=seed))[0])
    # Measured on seeds 0-9: bigram HR@10 ~0.58-0.62, most-popular ~0.13-0.20.
    assert bigram.mean() >= 2 * popular.mean()
    assert bigram.mean() > 0.4


def test_time_gap_marks_session_boundaries(frames):
    bigram, _, gap = _holdout_hits(frames[0])
    short = gap < 3600  # within-session gaps are minutes; session gaps at least an hour
    assert 0.05 < 1 - short.mean() < 0.4
    # Measured on seeds 0-9: ~0.66-0.72 after a short gap, ~0.05-0.18 after a session boundary.
    assert bigram[short].mean() > bigram[~short].mean() + 0.3


# --- writers and CLI


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_writers_round_trip(frames, tmp_path, fmt):
    paths = synth.write_frames(*frames, out_dir=tmp_path / "demo", fmt=fmt)
    assert sorted(paths) == ["clicks", "items", "users"]
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    for frame, name in zip(frames, ("clicks", "items", "users"), strict=True):
        assert paths[name] == tmp_path / "demo" / f"{name}.{fmt}"
        pd.testing.assert_frame_equal(read(paths[name]), frame)


def test_write_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        synth.write(SMALL, tmp_path, fmt="json")


def test_config_validates():
    with pytest.raises(ValueError):
        SynthConfig(p_item_transition=0.99, p_random_popular=0.05)
    with pytest.raises(ValueError):
        SynthConfig(n_categories=3)
    with pytest.raises(TypeError):
        SynthConfig(n_userz=10)  # type: ignore[call-arg]


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="training")
    synth.add_cli(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "demo"
    flags = "--users 50 --items 100 --categories 5 --events-per-user 10 --seed 3 --format csv"
    args = parser.parse_args(["synth", "--out", str(out), *flags.split()])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "50 users" in printed[0] and "100 items" in printed[0]
    assert sorted(p.name for p in out.iterdir()) == ["clicks.csv", "items.csv", "users.csv"]
    assert pd.read_csv(out / "users.csv")["user_id"].nunique() == 50
