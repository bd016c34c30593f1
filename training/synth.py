"""A synthetic click log with planted structure that a sequence model can learn and popularity cannot.

The world, drawn once per seed:
- every item belongs to one category; within a category, popularity is Zipf;
- a sparse category transition matrix: each category has 2-3 likely successor categories;
- each item has a few *successor items* (mostly in successor categories, uniform within them, so
  popularity cannot predict them): the next click depends on the specific last item, not its category;
- each user has a preferred category, loosely tied to the profile columns (age band, gender).

Users click in sessions. Within a session (gaps of seconds to minutes) the next click is a successor
item of the previous click with probability `p_item_transition`, else a popular item of a successor
category, rarely a random popular item. A new session (gap of hours to days) starts from the
preferred category or the last one. So the last items beat most-popular clearly, and the time gap
tells whether the last item still matters (a session boundary resets it).

The log also holds "cart" and "purchase" rows (label 1) after some clicks on the same item, and
"impression" rows (label 0): popular items shown with a click, at its timestamp, and not clicked.

    python -m training synth --out data/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import InvalidArgument

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
LOG_COLUMNS = ("user_id", "item_id", "timestamp", "event", "label")
ITEM_COLUMNS = ("item_id", "category", "brand")
USER_COLUMNS = ("user_id", "age_band", "gender")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
GENDERS = ("F", "M")

# Event codes while generating; names in the log. Label 1 for what the user did, 0 for what was shown.
_EVENTS = np.array(["click", "cart", "purchase", "impression"], dtype=object)
_CLICK, _CART, _PURCHASE, _IMPRESSION = range(4)

_HOUR = 3600
_DAY = 24 * _HOUR


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes the synthetic log. Same config (seed included) -> identical frames."""

    # --- sizes
    n_users: int = 2000  # enough users for a stable HR@10 on held-out last clicks
    n_items: int = 1000  # small enough that a Zipf head exists, large enough that popularity is weak
    n_categories: int = 20  # a category transition matrix needs a few dozen categories at most
    n_brands: int = 50  # a second item categorical, correlated with category (side-feature signal)
    events_per_user: float = 40.0  # mean clicks per user; counts vary per user (negative binomial)
    min_events_per_user: int = 5  # every user keeps a history plus held-out clicks after splitting
    # --- popularity
    zipf_exponent: float = 1.1  # within-category popularity ~ 1 / rank**s: a realistic long tail
    # --- planted sequential structure
    min_successor_categories: int = 2  # each category leads to 2-3 others: a sparse transition matrix
    max_successor_categories: int = 3
    n_successor_items: int = 3  # per item: the specific items that follow it (recency signal)
    p_successor_in_successor_category: float = 0.8  # successor items mostly follow the category graph
    p_item_transition: float = 0.6  # in a session: next click is a successor item of the previous one
    p_random_popular: float = 0.05  # in a session: a globally popular item (noise); else category move
    p_new_session: float = 0.15  # after each click; mean session length ~ 1 / p clicks
    p_resume_preferred: float = 0.7  # a new session restarts at the preferred category, else the last
    # --- profiles and side information (loose correlations: a signal, not a leak)
    p_profile_match: float = 0.6  # age band / gender follow the preferred category's typical ones
    p_brand_match: float = 0.8  # an item's brand is one of its category's own brands
    # --- time
    start_time: int = 1_704_067_200  # 2024-01-01T00:00:00Z, epoch seconds
    start_spread_s: int = 14 * _DAY  # users start at different times, as in a real log window
    within_session_gap_s: tuple[float, float] = (60.0, 300.0)  # per-user mean of the exponential gap
    session_gap_s: tuple[float, float] = (1.0 * _HOUR, 3.0 * _DAY)  # log-uniform gap between sessions
    # --- extra events
    p_cart: float = 0.05  # a click is followed by a cart on the same item
    p_purchase_given_cart: float = 0.3  # a cart is followed by a purchase
    p_impression: float = 0.3  # a click comes with 1-2 shown-not-clicked popular items (label 0)
    seed: int = 0  # the only source of randomness (numpy Generator)

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1 or self.n_brands < 1:
            raise ValueError("n_users, n_items and n_brands must be positive")
        if self.n_categories <= self.max_successor_categories:
            raise ValueError("n_categories must exceed max_successor_categories (successors exclude self)")
        if self.n_items < self.n_categories * (self.n_successor_items + 1):
            raise ValueError("n_items too small: every category needs n_successor_items + 1 items")
        if not 1 <= self.min_successor_categories <= self.max_successor_categories:
            raise ValueError("need 1 <= min_successor_categories <= max_successor_categories")
        if self.min_events_per_user < 2 or self.events_per_user < self.min_events_per_user:
            raise ValueError("need 2 <= min_events_per_user <= events_per_user")
        if self.zipf_exponent < 0 or self.start_time < 0 or self.start_spread_s < 0:
            raise ValueError("zipf_exponent, start_time and start_spread_s must be non-negative")
        probs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("p_")}
        for name, p in probs.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p} is not a probability")
        if self.p_item_transition + self.p_random_popular > 1.0:
            raise ValueError("p_item_transition + p_random_popular must be <= 1")
        for name in ("within_session_gap_s", "session_gap_s"):
            lo, hi = getattr(self, name)
            if not 1.0 <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi")


@dataclass(frozen=True)
class _World:
    """The hidden structure, drawn once per seed: what the log's clicks follow."""

    item_category: np.ndarray  # (n_items,) category index of each item
    item_brand: np.ndarray  # (n_items,) brand index
    category_items: list[np.ndarray]  # per category: item indices, most popular first
    category_cdf: list[np.ndarray]  # per category: Zipf CDF over category_items
    transition_cdf: np.ndarray  # (n_categories, n_categories) row-wise CDF of the sparse transitions
    successors: np.ndarray  # (n_items, n_successor_items) successor items of each item
    popular_items: np.ndarray  # (n_items,) item indices by global popularity, most popular first
    popular_cdf: np.ndarray  # (n_items,) CDF over popular_items
    user_preferred: np.ndarray  # (n_users,) preferred category of each user
    user_age_band: np.ndarray  # (n_users,) index into AGE_BANDS
    user_gender: np.ndarray  # (n_users,) index into GENDERS


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0  # searchsorted(side="right") on u in [0, 1) then never runs past the end
    return cdf


def _pick(cdf: np.ndarray, u: float) -> int:
    return int(np.searchsorted(cdf, u, side="right"))


def _draw_world(cfg: SynthConfig, rng: np.random.Generator) -> _World:
    n_cat = cfg.n_categories

    # Items: balanced categories, a random Zipf rank inside each.
    item_category = rng.permutation(np.arange(cfg.n_items) % n_cat)
    category_items = [rng.permutation(np.flatnonzero(item_category == c)) for c in range(n_cat)]
    category_cdf = [_cdf(1.0 / np.arange(1, len(ids) + 1) ** cfg.zipf_exponent) for ids in category_items]

    # Brands: brand b is "home" to category b % n_categories; most items carry a home brand.
    home_brands = [np.arange(c, cfg.n_brands, n_cat) for c in range(n_cat)]
    item_brand = rng.integers(0, cfg.n_brands, size=cfg.n_items)
    for i, c in enumerate(item_category):
        if len(home_brands[c]) and rng.random() < cfg.p_brand_match:
            item_brand[i] = rng.choice(home_brands[c])

    # Sparse category transitions: 2-3 successor categories (never itself), Dirichlet weights.
    transition = np.zeros((n_cat, n_cat))
    for c in range(n_cat):
        k = int(rng.integers(cfg.min_successor_categories, cfg.max_successor_categories + 1))
        others = np.delete(np.arange(n_cat), c)
        transition[c, rng.choice(others, size=k, replace=False)] = rng.dirichlet(np.full(k, 2.0))
    transition_cdf = np.stack([_cdf(row) for row in transition])

    # Successor items: uniform inside the chosen category, so item popularity does not predict them.
    successors = np.empty((cfg.n_items, cfg.n_successor_items), dtype=np.int64)
    for i in range(cfg.n_items):
        chosen: list[int] = []
        while len(chosen) < cfg.n_successor_items:
            if rng.random() < cfg.p_successor_in_successor_category:
                c = _pick(transition_cdf[item_category[i]], rng.random())
            else:
                c = int(rng.integers(n_cat))
            j = int(rng.choice(category_items[c]))
            if j != i and j not in chosen:
                chosen.append(j)
        successors[i] = chosen

    # Global popularity: categories are balanced, so an item's share is its within-category share.
    share = np.empty(cfg.n_items)
    for ids, cdf in zip(category_items, category_cdf, strict=True):
        share[ids] = np.diff(cdf, prepend=0.0) / n_cat
    popular_items = np.argsort(-share, kind="stable")

    # Users: a preferred category; profile columns follow the category's typical ones, loosely.
    user_preferred = rng.integers(0, n_cat, size=cfg.n_users)
    category_age = rng.integers(0, len(AGE_BANDS), size=n_cat)
    category_gender = rng.integers(0, len(GENDERS), size=n_cat)
    match_age = rng.random(cfg.n_users) < cfg.p_profile_match
    match_gender = rng.random(cfg.n_users) < cfg.p_profile_match
    user_age_band = np.where(match_age, category_age[user_preferred], rng.integers(0, len(AGE_BANDS), size=cfg.n_users))
    user_gender = np.where(
        match_gender, category_gender[user_preferred], rng.integers(0, len(GENDERS), size=cfg.n_users)
    )

    return _World(
        item_category=item_category,
        item_brand=item_brand,
        category_items=category_items,
        category_cdf=category_cdf,
        transition_cdf=transition_cdf,
        successors=successors,
        popular_items=popular_items,
        popular_cdf=_cdf(share[popular_items]),
        user_preferred=user_preferred,
        user_age_band=user_age_band,
        user_gender=user_gender,
    )


# Columns of the per-user uniform draws (one row per click).
_U_SESSION, _U_RESUME, _U_MOVE, _U_PICK, _U_ITEM, _U_GAP = range(6)
_U_CART, _U_PURCHASE, _U_IMP, _U_IMP_N, _U_IMP_A, _U_IMP_B = range(6, 12)
_N_UNIFORMS = 12


def _gaps(cfg: SynthConfig, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n + 1,) gaps in seconds: gaps[k] precedes click k (gaps[0] = 0); gaps[n] follows the last click.

    A session ends after each click with probability p_new_session. Within a session the gap is
    exponential with a per-user mean; between sessions it is log-uniform over hours to days.
    """
    n = len(u)
    mean_within = rng.uniform(*cfg.within_session_gap_s)
    within = np.maximum(1.0, -mean_within * np.log1p(-u[:, _U_GAP]))
    lo, hi = np.log(cfg.session_gap_s[0]), np.log(cfg.session_gap_s[1])
    between = np.exp(lo + u[:, _U_GAP] * (hi - lo))
    new_session = u[:, _U_SESSION] < cfg.p_new_session
    gaps = np.empty(n + 1, dtype=np.int64)
    gaps[0] = 0
    gaps[1:n] = np.where(new_session[1:], between[1:], within[1:]).astype(np.int64)
    gaps[n] = int(within[0])  # a within-session gap after the last click (room for cart/purchase)
    return gaps


def _user_rows(cfg: SynthConfig, world: _World, user: int, rng: np.random.Generator) -> list[tuple]:
    """(item, timestamp, event code) rows of one user, in time order."""
    r = cfg.events_per_user - cfg.min_events_per_user
    n = cfg.min_events_per_user + (int(rng.negative_binomial(2, 2.0 / (2.0 + r))) if r > 0 else 0)
    u = rng.random((n, _N_UNIFORMS))
    gaps = _gaps(cfg, u, rng)
    t = cfg.start_time + int(rng.integers(0, cfg.start_spread_s + 1))

    def popular_in(c: int, x: float) -> int:
        return int(world.category_items[c][_pick(world.category_cdf[c], x)])

    def popular(x: float) -> int:
        return int(world.popular_items[_pick(world.popular_cdf, x)])

    rows: list[tuple] = []
    category = int(world.user_preferred[user])
    item = -1
    for k in range(n):
        t += int(gaps[k])
        uk = u[k]
        if k == 0 or uk[_U_SESSION] < cfg.p_new_session:  # a session starts: preferred or last category
            if k > 0 and uk[_U_RESUME] < cfg.p_resume_preferred:
                category = int(world.user_preferred[user])
            item = popular_in(category, uk[_U_ITEM])
        elif uk[_U_MOVE] < cfg.p_item_transition:  # the specific successor of the last item
            item = int(world.successors[item, int(uk[_U_PICK] * cfg.n_successor_items)])
        elif uk[_U_MOVE] < cfg.p_item_transition + cfg.p_random_popular:
            item = popular(uk[_U_ITEM])
        else:  # a popular item of a successor category
            item = popular_in(_pick(world.transition_cdf[category], uk[_U_PICK]), uk[_U_ITEM])
        category = int(world.item_category[item])
        rows.append((item, t, _CLICK))

        if uk[_U_IMP] < cfg.p_impression:  # shown with the click, not clicked
            shown = {popular(uk[_U_IMP_A])}
            if uk[_U_IMP_N] < 0.5:
                shown.add(popular(uk[_U_IMP_B]))
            rows.extend((j, t, _IMPRESSION) for j in sorted(shown - {item}))
        if uk[_U_CART] < cfg.p_cart:  # floor(g * f) <= g - 1 for g >= 1: stays before the next click
            rows.append((item, t + int(gaps[k + 1] * 0.3), _CART))
            if uk[_U_PURCHASE] < cfg.p_purchase_given_cart:
                rows.append((item, t + int(gaps[k + 1] * 0.6), _PURCHASE))
    return rows


def _ids(prefix: str, n: int, min_width: int) -> np.ndarray:
    width = max(min_width, len(str(n - 1)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def generate(cfg: SynthConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(log, items, users) for `cfg`; deterministic for `cfg.seed`. The log is sorted by user, then time."""
    rng = np.random.default_rng(cfg.seed)
    world = _draw_world(cfg, rng)

    user_idx: list[np.ndarray] = []
    rows: list[tuple] = []
    for user in range(cfg.n_users):
        user_rows = _user_rows(cfg, world, user, rng)
        user_idx.append(np.full(len(user_rows), user, dtype=np.int64))
        rows.extend(user_rows)
    item_idx, timestamp, event = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))

    user_names = _ids("u", cfg.n_users, 5)
    item_names = _ids("i", cfg.n_items, 5)
    category_names = _ids("c", cfg.n_categories, 2)
    clicks = pd.DataFrame(
        {
            "user_id": pd.array(user_names[np.concatenate(user_idx)], dtype="str"),
            "item_id": pd.array(item_names[item_idx], dtype="str"),
            "timestamp": timestamp,
            "event": pd.array(_EVENTS[event], dtype="str"),
            "label": (event != _IMPRESSION).astype(np.int64),
        }
    )
    # Rows are generated in (user, time) order already; the stable sort keeps click -> impression ->
    # cart -> purchase order within equal timestamps and guards the contract.
    clicks = clicks.sort_values(["user_id", "timestamp"], kind="stable", ignore_index=True)

    items = pd.DataFrame(
        {
            "item_id": pd.array(item_names, dtype="str"),
            "category": pd.array(category_names[world.item_category], dtype="str"),
            "brand": pd.array(_ids("b", cfg.n_brands, 3)[world.item_brand], dtype="str"),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": pd.array(user_names, dtype="str"),
            "age_band": pd.array(np.array(AGE_BANDS, dtype=object)[world.user_age_band], dtype="str"),
            "gender": pd.array(np.array(GENDERS, dtype=object)[world.user_gender], dtype="str"),
        }
    )
    log.info(
        "synth: %d rows (%d clicks) for %d users, %d items, seed %d",
        len(clicks),
        int((event == _CLICK).sum()),
        cfg.n_users,
        cfg.n_items,
        cfg.seed,
    )
    return clicks, items, users


def write_frames(
    clicks: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, out_dir: Path, fmt: str = "parquet"
) -> dict[str, Path]:
    """Write clicks.<fmt>, items.<fmt>, users.<fmt> into out_dir; returns {"clicks"|"items"|"users": path}."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, frame in (("clicks", clicks), ("items", items), ("users", users)):
        path = out_dir / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        paths[name] = path
    log.info("synth: wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def write(cfg: SynthConfig, out_dir: Path, fmt: str = "parquet") -> dict[str, Path]:
    """generate(cfg) and write the three frames into out_dir (see write_frames)."""
    return write_frames(*generate(cfg), out_dir=out_dir, fmt=fmt)


# --- CLI: the lead's training/__main__.py calls add_cli(subparsers); `python -m training synth ...`


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `synth` subcommand; it dispatches to run_cli through `args.func`."""
    d = SynthConfig()
    p = subparsers.add_parser("synth", help="write a synthetic click log (clicks, items, users)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--users", type=int, default=d.n_users, help=f"number of users (default {d.n_users})")
    p.add_argument("--items", type=int, default=d.n_items, help=f"number of items (default {d.n_items})")
    p.add_argument("--categories", type=int, default=d.n_categories, help=f"item categories (default {d.n_categories})")
    p.add_argument(
        "--events-per-user",
        type=float,
        default=d.events_per_user,
        help=f"mean clicks per user (default {d.events_per_user:g})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--format", choices=FORMATS, default="parquet", help="file format (default parquet)")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Write the files for the parsed `synth` arguments and print one summary line."""
    try:
        cfg = SynthConfig(
            n_users=args.users,
            n_items=args.items,
            n_categories=args.categories,
            events_per_user=args.events_per_user,
            seed=args.seed,
        )
    except ValueError as err:
        given = f"--users {args.users} --items {args.items} --categories {args.categories}"
        raise InvalidArgument(f"synth {given}: {err}; fix: change those options") from None
    clicks, items, users = generate(cfg)
    paths = write_frames(clicks, items, users, args.out, args.format)
    n_clicks = int((clicks["event"] == "click").sum())
    print(
        f"synth: {len(clicks)} rows ({n_clicks} clicks), {len(users)} users, {len(items)} items -> "
        + ", ".join(str(p) for p in paths.values())
    )
    return 0
