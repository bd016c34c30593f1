"""Adapters from public click and rating logs to the canonical `ClickLog` (see `recsys.data`).

One function per format, each from the raw files of the public release:

  ml_100k          MovieLens 100K directory: u.data, u.item, u.genre, u.user
  ml_latest_small  MovieLens latest(-small) directory (also 20M, 25M, 32M): ratings.csv, movies.csv
  ml_1m            MovieLens 1M directory: ratings.tsv.gz (or the original ratings.dat), movies.dat, users.dat
  amazon           S3-Rec / ICLRec sequence file (`user item item ...`), optional *_item2attributes.json
  taobao           Taobao UserBehavior CSV (user_id,item_id,category_id,behavior_type,timestamp; no header)

Every line is checked: a malformed one raises `DataValidationError` naming the file, the line number as
an editor shows it (1-based, header included) and the fix. The parsed columns then go through
`validate_log` / `validate_side_table`, so the result is exactly what `load_log` would give for the same
rows. Each adapter returns `(ClickLog, AdapterReport)` and logs the report; `load_dataset` picks one by
name from `DATASETS` ("movielens" detects which MovieLens layout a directory holds).
"""

from __future__ import annotations

import csv
import gc
import gzip
import inspect
import json
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data import ClickLog, validate_log, validate_side_table
from recsys.errors import DataValidationError, InvalidArgument

log = logging.getLogger(__name__)

# ML-1M age band codes (its README): under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
AGE_BANDS = ("1", "18", "25", "35", "45", "50", "56")
_AGE_EDGES = (18, 25, 35, 45, 50, 56)  # the lower bound of every band after the first
NO_GENRE = ("unknown", "(no genres listed)")  # MovieLens' placeholders for a movie without genre
TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")  # the four behavior types of UserBehavior
# The UserBehavior collection window, 2017-11-25 00:00 to 2017-12-04 00:00 China time (UTC+8): events
# outside it are kept (their time is valid) but counted, as the original has a few such outliers.
TAOBAO_WINDOW = (1511539200, 1512316800)


@dataclass(frozen=True)
class AdapterReport:
    """What an adapter read, kept and left out: `rows_read == rows_kept + sum(dropped.values())`."""

    dataset: str
    rows_read: int  # data records read (ratings, events or interactions); headers and blank lines excluded
    rows_kept: int  # events in the log
    dropped: dict[str, int]  # reason -> records left out of the log
    notes: dict[str, int] = field(default_factory=dict)  # counts for information only: nothing dropped

    def line(self) -> str:
        text = f"{self.dataset}: read {self.rows_read:,} rows, kept {self.rows_kept:,}"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{reason}: {n:,}" for reason, n in self.dropped.items())
        if self.notes:
            text += "; notes: " + ", ".join(f"{what}: {n:,}" for what, n in self.notes.items())
        return text


# --- reading lines and fields, every error naming its line ----------------------------------------------


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small lists (4x faster, no cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _malformed(file: Path, line: int, problem: str, fix: str, column: str | None = None) -> DataValidationError:
    return DataValidationError(f"{file}, line {line}", problem, fix, column)


def _read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file (gunzipped when it ends in .gz) without their ends: `lines[i]` is line i + 1."""
    if not path.is_file():
        raise DataValidationError(str(path), "file not found", "pass the directory or file of the public release")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataValidationError(str(path), f"cannot be read ({err})", "pass an intact (gzip) file") from err
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise _malformed(
            path, line, f"byte {data[err.start]:#04x} is not {encoding}", f"re-save it as {encoding}"
        ) from None
    lines = text.removeprefix("\ufeff").split("\n")  # not splitlines(): latin-1 '\x85' is a line break there
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _parse_ints(
    file: Path, values: Sequence[str], lines: Sequence[int], name: str, empty: int | None = None
) -> np.ndarray:
    """`values` as non-negative int64; a blank value becomes `empty` when given, else it is an error."""
    try:  # the fast path; the loop below handles what it rejects and names the culprit
        text = np.asarray(values, dtype=str)
        blank = text == "" if empty is not None else np.zeros(len(text), bool)
        out = np.where(blank, "0", text).astype(np.int64)
        if (out >= 0).all():
            out[blank] = empty if empty is not None else 0
            return out
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(values), np.int64)
    for k, value in enumerate(values):
        try:
            out[k] = empty if empty is not None and not value.strip() else int(value)
            ok = empty is not None and out[k] == empty or out[k] >= 0
        except (ValueError, OverflowError):
            ok = False
        if not ok:
            raise _malformed(
                file, lines[k], f"{name} {value!r} is not a non-negative integer", f"write {name} as digits", name
            )
    return out


@dataclass
class _Records:
    """The non-blank records of one file, split into fields; `lines[k]` is record k's line number."""

    file: Path
    names: tuple[str, ...]
    lines: Sequence[int]
    columns: list[tuple[str, ...]]  # one per name, a field per record

    def __len__(self) -> int:
        return len(self.lines)

    def text(self, name: str) -> list[str]:
        return [v.strip() for v in self.columns[self.names.index(name)]]

    def ints(self, name: str, empty: int | None = None) -> np.ndarray:
        return _parse_ints(self.file, self.columns[self.names.index(name)], self.lines, name, empty)

    def numbers(self, name: str) -> np.ndarray:
        """Finite floats (a rating)."""
        values = self.columns[self.names.index(name)]
        out = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64, copy=True)
        for k in np.flatnonzero(~np.isfinite(out)):  # to_numeric rejects " 4" where float() does not
            try:
                out[k] = float(values[k])
            except ValueError:
                out[k] = np.nan
            if not np.isfinite(out[k]):
                raise _malformed(self.file, self.lines[k], f"{name} {values[k]!r} is not a number", "write one", name)
        return out


def _records(file: Path, lines: Sequence[str], names: Sequence[str], sep: str, first: int = 1) -> _Records:
    """Each non-blank line split on `sep` into exactly len(names) fields; `sep=","` follows CSV quoting.

    `first` is the line number of `lines[0]` (2 after a header)."""
    numbers: Sequence[int]
    with _no_gc():
        if sep == ",":
            reader = csv.reader(lines)
            numbers, rows = [], []
            try:
                for row in reader:
                    numbers.append(first - 1 + reader.line_num)  # line_num: lines consumed so far
                    rows.append(row)
            except csv.Error as err:
                line = first - 1 + reader.line_num
                raise _malformed(file, line, f"not valid CSV ({err})", "fix the quoting") from err
        else:
            rows = [ln.split(sep) for ln in lines]
            numbers = range(first, first + len(rows))
        odd = np.flatnonzero(np.fromiter(map(len, rows), np.int64, len(rows)) != len(names))
        if len(odd):
            for k in odd:
                if len(rows[k]) > 1 or "".join(rows[k]).strip():
                    layout = f"{len(names)} fields separated by {sep!r}: {', '.join(names)}"
                    problem = f"{len(rows[k])} fields, expected {layout}"
                    raise _malformed(file, numbers[k], problem, "fix or remove the line")
            keep = np.ones(len(rows), bool)
            keep[odd] = False  # blank lines
            rows = [row for row, kept in zip(rows, keep, strict=True) if kept]
            numbers = [n for n, kept in zip(numbers, keep, strict=True) if kept]
        columns = list(zip(*rows, strict=True)) or [()] * len(names)
    return _Records(file, tuple(names), numbers, columns)


def _csv_with_header(file: Path, required: Sequence[str], sep: str = ",", encoding: str = "utf-8") -> _Records:
    """A file whose first line names its columns; `required` must be among them (any order)."""
    lines = _read_lines(file, encoding)
    header = next(csv.reader(lines[:1]), []) if sep == "," else (lines[0].split(sep) if lines else [])
    header = [h.strip() for h in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise _malformed(
            file, 1, f"the header {header} lacks {missing}", f"the first line must name the columns {list(required)}"
        )
    return _records(file, lines[1:], header, sep, first=2)


def _first_duplicate(file: Path, ids: np.ndarray, lines: Sequence[int], what: str) -> None:
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        first = lines[int(np.flatnonzero(ids == ids[k])[0])]
        raise _malformed(file, lines[k], f"{what} {ids[k]} again (first on line {first})", f"keep one line per {what}")


# --- building the canonical frames -------------------------------------------------------------------------


def _items_table(file: Path, ids: np.ndarray, lines: Sequence[int], columns: dict[str, list]) -> pd.DataFrame:
    """item_id + multi-valued columns (cells: tuples of str), checked like a `load_log` item table."""
    _first_duplicate(file, ids, lines, "item")
    return validate_side_table(pd.DataFrame({"item_id": ids.astype(str), **columns}), str(file), "item_id")


def _users_table(file: Path, ids: np.ndarray, lines: Sequence[int], columns: dict[str, list]) -> pd.DataFrame:
    """user_id + single-valued columns (cells: str), checked and reduced as `load_log` does."""
    _first_duplicate(file, ids, lines, "user")
    users = validate_side_table(pd.DataFrame({"user_id": ids.astype(str), **columns}), str(file), "user_id")
    return users.assign(**{c: users[c].map(lambda t: t[0] if t else "") for c in users.columns if c != "user_id"})


def _genres(text: str) -> tuple[str, ...]:
    return tuple(g for g in (g.strip() for g in text.split("|")) if g and g not in NO_GENRE)


def _rating_filter(rating: np.ndarray, min_rating: float | None) -> tuple[np.ndarray, dict[str, int]]:
    if min_rating is None:
        return np.ones(len(rating), bool), {}
    keep = rating >= min_rating
    return keep, {f"rating < {min_rating:g}": int((~keep).sum())}


def _finish(
    dataset: str,
    file: Path,
    frame: pd.DataFrame,
    rows_read: int,
    dropped: dict[str, int],
    notes: dict[str, int] | None = None,
    items: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
) -> tuple[ClickLog, AdapterReport]:
    """Validate the raw events as `load_log` does, count what lacks side features, log the report."""
    if frame.empty:
        raise DataValidationError(
            str(file), f"no rows kept of {rows_read:,} read (dropped: {dropped})", "relax the filters or check the file"
        )
    events, has_time = validate_log(frame, str(file))
    notes = dict(notes or {})
    if items is not None:
        missing = ~pd.Series(events["item_id"].unique()).isin(items["item_id"])
        if missing.any():
            notes["log items missing from the item table"] = int(missing.sum())
    if users is not None:
        missing = ~pd.Series(events["user_id"].unique()).isin(users["user_id"])
        if missing.any():
            notes["log users missing from the user table"] = int(missing.sum())
    report = AdapterReport(dataset, rows_read, len(events), dropped, notes)
    log.info("%s", report.line())
    return ClickLog(events, items, users, has_time, source=str(file)), report


def _directory(path: Path, dataset: str, marker: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataValidationError(str(path), f"not a directory ({dataset} is one)", f"pass the folder holding {marker}")
    return path


# --- MovieLens -----------------------------------------------------------------------------------------------


def ml_100k(path: Path, min_rating: float | None = None) -> tuple[ClickLog, AdapterReport]:
    """MovieLens 100K: every rating (>= `min_rating` when given) is a click.

    Items: `genre` (tuple of u.genre names; "unknown" means none). Users: `gender`, `age` (the ML-1M band
    code, see `AGE_BANDS`), `occupation`."""
    path = _directory(path, "ml-100k", "u.data")
    names = _records(path / "u.genre", _read_lines(path / "u.genre", "latin-1"), ("genre", "index"), "|")
    index = names.ints("index")
    if sorted(index.tolist()) != list(range(len(index))):
        raise DataValidationError(str(names.file), f"genre indices {index.tolist()}", "number the genres 0, 1, ...")
    genre_names = [g for _, g in sorted(zip(index.tolist(), names.text("genre"), strict=True))]

    flags = tuple(f"flag_{g}" for g in genre_names)
    movies = _records(
        path / "u.item",
        _read_lines(path / "u.item", "latin-1"),
        ("item_id", "title", "release_date", "video_release_date", "imdb_url", *flags),
        "|",
    )
    genres = []
    for number, *cells in zip(movies.lines, *(movies.text(f) for f in flags), strict=True):
        if any(c not in ("0", "1") for c in cells):
            raise _malformed(movies.file, number, f"genre flags {cells} are not all 0 or 1", "write each as 0 or 1")
        genres.append(tuple(g for g, c in zip(genre_names, cells, strict=True) if c == "1" and g not in NO_GENRE))
    items = _items_table(movies.file, movies.ints("item_id"), movies.lines, {"genre": genres})

    people = _records(
        path / "u.user", _read_lines(path / "u.user", "latin-1"), ("user_id", "age", "gender", "occupation", "zip"), "|"
    )
    bands = np.asarray(AGE_BANDS)[np.searchsorted(_AGE_EDGES, people.ints("age"), side="right")]
    users = _users_table(
        people.file,
        people.ints("user_id"),
        people.lines,
        {"gender": people.text("gender"), "age": bands.tolist(), "occupation": people.text("occupation")},
    )

    file = path / "u.data"
    ratings = _records(file, _read_lines(file), ("user_id", "item_id", "rating", "timestamp"), "\t")
    keep, dropped = _rating_filter(ratings.numbers("rating"), min_rating)
    frame = pd.DataFrame(
        {
            "user_id": ratings.ints("user_id")[keep].astype(str),
            "item_id": ratings.ints("item_id")[keep].astype(str),
            "timestamp": ratings.ints("timestamp")[keep],
        }
    )
    return _finish("ml-100k", file, frame, len(ratings), dropped, items=items, users=users)


def ml_latest_small(path: Path, min_rating: float | None = None) -> tuple[ClickLog, AdapterReport]:
    """MovieLens latest-small (the same layout as 20M, 25M, 32M): every rating (>= `min_rating`) is a click.

    Items: `genre` from movies.csv ("(no genres listed)" means none). No user table."""
    path = _directory(path, "ml-latest-small", "ratings.csv")
    movies = _csv_with_header(path / "movies.csv", ("movieId", "genres"))
    items = _items_table(
        movies.file, movies.ints("movieId"), movies.lines, {"genre": [_genres(g) for g in movies.text("genres")]}
    )
    file = path / "ratings.csv"
    ratings = _csv_with_header(file, ("userId", "movieId", "rating", "timestamp"))
    keep, dropped = _rating_filter(ratings.numbers("rating"), min_rating)
    frame = pd.DataFrame(
        {
            "user_id": ratings.ints("userId")[keep].astype(str),
            "item_id": ratings.ints("movieId")[keep].astype(str),
            "timestamp": ratings.ints("timestamp")[keep],
        }
    )
    return _finish("ml-latest-small", file, frame, len(ratings), dropped, items=items)


def _ml_1m_ratings(path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(file, user, item, rating, timestamp with -1 where empty) from ratings.tsv(.gz) or ratings.dat."""
    names = ("UserID", "MovieID", "Rating", "Timestamp")
    tsv = [path / n for n in ("ratings.tsv.gz", "ratings.tsv") if (path / n).is_file()]
    if tsv:  # the shared rebuild: a header naming (at least) these columns
        rec = _csv_with_header(tsv[0], names, sep="\t")
    else:  # the original GroupLens release: UserID::MovieID::Rating::Timestamp, no header
        rec = _records(path / "ratings.dat", _read_lines(path / "ratings.dat"), names, "::")
    return rec.file, rec.ints("UserID"), rec.ints("MovieID"), rec.numbers("Rating"), rec.ints("Timestamp", empty=-1)


def ml_1m(path: Path, min_rating: float | None = 4) -> tuple[ClickLog, AdapterReport]:
    """MovieLens 1M: ratings >= `min_rating` (all when None) are clicks.

    A rating with an empty timestamp cannot be placed in a history and never enters the log: after the
    rating filter, such rows are dropped as "no timestamp" (all 337,147 of the shared file's are ratings
    1-3, so with min_rating 4 none is lost). Clicks at the same second are ordered by movie id.
    Items: `genre`. Users (users.dat, when present; the original ML-10M has none): `gender`, `age`
    (band code), `occupation` (code), `zip1` (the zip's first character)."""
    path = _directory(path, "ml-1m", "ratings.tsv.gz or ratings.dat")
    movies = _records(
        path / "movies.dat", _read_lines(path / "movies.dat", "latin-1"), ("item_id", "title", "genres"), "::"
    )
    items = _items_table(
        movies.file, movies.ints("item_id"), movies.lines, {"genre": [_genres(g) for g in movies.text("genres")]}
    )
    users = None
    if (path / "users.dat").is_file():
        people = _records(
            path / "users.dat",
            _read_lines(path / "users.dat", "latin-1"),
            ("user_id", "gender", "age", "occupation", "zip"),
            "::",
        )
        columns = {
            "gender": people.text("gender"),
            "age": people.ints("age").astype(str).tolist(),
            "occupation": people.ints("occupation").astype(str).tolist(),
            "zip1": [z[:1] for z in people.text("zip")],
        }
        users = _users_table(people.file, people.ints("user_id"), people.lines, columns)
    else:
        log.warning("%s: no users.dat, so no user table", path)

    file, user, item, rating, time = _ml_1m_ratings(path)
    keep, dropped = _rating_filter(rating, min_rating)
    untimed = keep & (time < 0)
    dropped["no timestamp"] = int(untimed.sum())
    keep &= ~untimed
    # time order, ties by movie id (the ML-1M CTR protocol of issue 7); the later stable sort by user and
    # time keeps it. The shared file is already in this order; another file need not be
    rows = np.flatnonzero(keep)
    rows = rows[np.lexsort((item[rows], time[rows], user[rows]))]
    frame = pd.DataFrame(
        {"user_id": user[rows].astype(str), "item_id": item[rows].astype(str), "timestamp": time[rows]}
    )
    return _finish("ml-1m", file, frame, len(rating), dropped, items=items, users=users)


# --- Amazon sequences ----------------------------------------------------------------------------------------


def _line_of(text: str, needle: str) -> int:
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def _item_attributes(file: Path) -> tuple[dict[str, tuple[str, ...]], int]:
    """{item_id: attribute ids} from a JSON object `{item_id: [attr_id, ...]}`, and how many repeats it dropped."""
    text = "\n".join(_read_lines(file))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _malformed(file, err.lineno, f"invalid JSON ({err.msg}, column {err.colno})", "fix the JSON") from None
    if not isinstance(data, dict):
        raise _malformed(file, 1, f"a JSON {type(data).__name__}, not an object", 'write {"item_id": [attr_id, ...]}')
    out, repeats = {}, 0
    for key, values in data.items():
        if not key.strip().isdigit():
            raise _malformed(file, _line_of(text, f'"{key}"'), f"item id {key!r} is not an integer", "use the item ids")
        item = str(int(key))
        ok = isinstance(values, list) and all(isinstance(v, int | str) and not isinstance(v, bool) for v in values)
        if not ok:
            raise _malformed(
                file, _line_of(text, f'"{key}"'), f"item {key}: {values!r} is not a list of ids", "write a list of ids"
            )
        attrs = tuple(dict.fromkeys(str(v) for v in values if str(v).strip()))
        repeats += len(values) - len(attrs)
        out[item] = attrs
    return out, repeats


def amazon(path: Path, attributes: Path | None = None) -> tuple[ClickLog, AdapterReport]:
    """The S3-Rec / ICLRec sequence format: one line per user, `user item item ...` in time order.

    No timestamps: the log has no time (`has_time` False), each user's order is the file order. With
    `attributes` (`{item_id: [attr_id, ...]}`), an item table with one multi-valued column `attributes`
    covering the log's items and the file's (an item without attributes gets an empty tuple)."""
    file = Path(path)
    lines = _read_lines(file)
    user_tokens, user_lines, item_tokens, item_lines, counts = [], [], [], [], []
    for number, text in enumerate(lines, start=1):
        tokens = text.split()
        if not tokens:
            continue
        if len(tokens) == 1:
            raise _malformed(file, number, f"user {tokens[0]!r} has no items", "list the user's items after the id")
        user_tokens.append(tokens[0])
        user_lines.append(number)
        item_tokens.extend(tokens[1:])
        item_lines.extend([number] * (len(tokens) - 1))
        counts.append(len(tokens) - 1)
    users = _parse_ints(file, user_tokens, user_lines, "user_id")
    _first_duplicate(file, users, user_lines, "user")
    items = _parse_ints(file, item_tokens, item_lines, "item_id")
    frame = pd.DataFrame({"user_id": np.repeat(users, counts).astype(str), "item_id": items.astype(str)})

    table, notes = None, {}
    if attributes is not None:
        attrs, repeats = _item_attributes(Path(attributes))
        in_log = pd.unique(frame["item_id"])
        ids = sorted({*attrs, *in_log}, key=int)
        table = validate_side_table(
            pd.DataFrame({"item_id": ids, "attributes": [attrs.get(i, ()) for i in ids]}), str(attributes), "item_id"
        )
        notes = {
            "log items without attributes": sum(i not in attrs for i in in_log),
            "attribute items not in the log": len(set(attrs) - set(in_log)),
            "repeated attribute ids removed": repeats,
        }
    return _finish("amazon", file, frame, len(frame), {}, notes, items=table)


# --- Taobao UserBehavior ------------------------------------------------------------------------------------


def taobao(path: Path, behaviors: tuple[str, ...] = TAOBAO_BEHAVIORS) -> tuple[ClickLog, AdapterReport]:
    """Taobao UserBehavior: `user_id,item_id,category_id,behavior_type,timestamp`, no header.

    The behavior type is the event (pv = page view or click, cart, fav, buy; all label 1); rows of a type
    not in `behaviors` are dropped and counted. Items: `category` (one id; an item seen with several keeps
    its most frequent, ties to the first seen). Events outside `TAOBAO_WINDOW` are kept and counted."""
    unknown = [b for b in behaviors if b not in TAOBAO_BEHAVIORS]
    if unknown or not behaviors:
        raise InvalidArgument(f"behaviors {behaviors!r}; fix: choose among {TAOBAO_BEHAVIORS}")
    file = Path(path)
    names = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
    rec = _records(file, _read_lines(file), names, ",")
    user, item, category, time = (rec.ints(n) for n in ("user_id", "item_id", "category_id", "timestamp"))
    behavior = np.asarray(rec.text("behavior_type"), dtype=object)
    odd = ~np.isin(behavior, TAOBAO_BEHAVIORS)
    if odd.any():
        k = int(np.flatnonzero(odd)[0])
        raise _malformed(
            file, rec.lines[k], f"behavior {behavior[k]!r}", f"use one of {TAOBAO_BEHAVIORS}", "behavior_type"
        )
    keep = np.isin(behavior, behaviors)
    dropped = {f"behavior {b}": int((behavior == b).sum()) for b in TAOBAO_BEHAVIORS if b not in behaviors}

    # the category of each item: its most frequent one (every row votes, kept or not: it is item metadata)
    votes = pd.DataFrame({"item": item, "category": category}).groupby(["item", "category"], sort=False).size()
    best = votes.reset_index(name="n").sort_values("n", ascending=False, kind="stable").drop_duplicates("item")
    best = best.set_index("item").reindex(pd.unique(item))
    table = validate_side_table(
        pd.DataFrame({"item_id": best.index.astype(str), "category": [(str(c),) for c in best["category"]]}),
        str(file),
        "item_id",
    )
    start, end = TAOBAO_WINDOW
    notes = {
        "items with several categories (kept the most frequent)": int((votes.groupby(level=0).size() > 1).sum()),
        "timestamps outside 2017-11-25..12-03 UTC+8 (kept)": int(((time[keep] < start) | (time[keep] >= end)).sum()),
    }
    frame = pd.DataFrame(
        {
            "user_id": user[keep].astype(str),
            "item_id": item[keep].astype(str),
            "timestamp": time[keep],
            "event": behavior[keep],
        }
    )
    return _finish("taobao", file, frame, len(rec), dropped, notes, items=table)


# --- the registry ---------------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., tuple[ClickLog, AdapterReport]]] = {
    "ml-100k": ml_100k,
    "ml-latest-small": ml_latest_small,
    "ml-1m": ml_1m,
    "amazon": amazon,
    "taobao": taobao,
}


def detect_movielens(path: Path) -> str:
    """Which MovieLens layout a directory holds: "ml-100k", "ml-latest-small" or "ml-1m"."""
    path = _directory(path, "movielens", "the ratings file")
    for marker, name in (
        ("u.data", "ml-100k"),
        ("ratings.csv", "ml-latest-small"),
        ("ratings.tsv.gz", "ml-1m"),
        ("ratings.tsv", "ml-1m"),
        ("ratings.dat", "ml-1m"),
    ):
        if (path / marker).is_file():
            return name
    raise DataValidationError(
        str(path),
        "no MovieLens ratings file (u.data, ratings.csv, ratings.tsv.gz or ratings.dat)",
        "pass the directory of a MovieLens release",
    )


def load_dataset(
    name: str, path: str | Path, attributes: str | Path | None = None, **options: object
) -> tuple[ClickLog, AdapterReport]:
    """Run the adapter `DATASETS[name]` ("movielens": the detected MovieLens one) on `path`."""
    if name == "movielens":
        name = detect_movielens(Path(path))
    if name not in DATASETS:
        raise InvalidArgument(f"unknown dataset {name!r}; fix: use one of {', '.join([*DATASETS, 'movielens'])}")
    adapter = DATASETS[name]
    if attributes is not None:
        options["attributes"] = Path(attributes)
    accepted = [p for p in inspect.signature(adapter).parameters if p != "path"]
    for key in options:
        if key not in accepted:
            raise InvalidArgument(
                f"dataset {name!r} has no option {key!r}; fix: drop it (its options: {', '.join(accepted) or 'none'})"
            )
    return adapter(Path(path), **options)
