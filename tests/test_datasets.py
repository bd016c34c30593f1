"""The public-log adapters (`training.datasets`): canonical output, report counts, malformed lines.

Every adapter is tested on small files written here; the `data` tests check the documented counts of the
public logs in ../shared/data and skip when they are absent.
"""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from recsys.data import ClickLog, load_log
from recsys.errors import DataValidationError, InvalidArgument
from training.datasets import (
    DATASETS,
    AdapterReport,
    amazon,
    load_dataset,
    ml_1m,
    ml_100k,
    ml_latest_small,
    taobao,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# --- small files in each format ------------------------------------------------------------------------------


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def replace_line(path: Path, number: int, text: str, encoding: str = "utf-8") -> None:
    """Line `number` (1-based) of a (gzipped) text file becomes `text`."""
    data = path.read_bytes()
    lines = (gzip.decompress(data) if path.suffix == ".gz" else data).decode(encoding).split("\n")
    lines[number - 1] = text
    write(path, "\n".join(lines), encoding)


def ml_100k_dir(root: Path) -> Path:
    d = root / "ml-100k"
    write(d / "u.genre", "unknown|0\nAction|1\nComedy|2\n\n", "latin-1")  # the original ends in blank lines
    write(
        d / "u.item",
        "1|Toy Story (1995)|01-Jan-1995||http://a|0|0|1\n"
        "2|Café Society (1995)|01-Jan-1995||http://b|0|1|1\n"
        "3|Nothing (1995)|||http://c|1|0|0\n",
        "latin-1",
    )
    write(d / "u.user", "1|24|M|technician|85711\n2|17|F|student|94043\n3|56|M|retired|T8H1N\n", "latin-1")
    write(d / "u.data", "2\t1\t5\t300\n1\t2\t3\t200\n1\t1\t4\t100\n2\t3\t1\t100\n3\t1\t2\t50\n")
    return d


def ml_latest_dir(root: Path) -> Path:
    d = root / "ml-latest-small"
    write(
        d / "movies.csv",
        'movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n20,Toy Story (1995),(no genres listed)\n'
        "30,Unrated (1999),Drama\n",
    )
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,2.5,50\n2,10,0.5,10\n")
    return d


ML_1M_RATINGS = "1\t10\t5\t300\ttest\n1\t20\t4\t100\ttrain_pos\n1\t30\t2\t\t\n2\t10\t3\t50\tval\n2\t20\t4\t\t\n"


def ml_1m_dir(root: Path) -> Path:
    d = root / "ml-1m"
    write(
        d / "movies.dat", "10::Heat (1995)::Action|Crime\n20::Amélie (2001)::Comedy|Romance\n30::X::Drama\n", "latin-1"
    )
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::98107-2117\n", "latin-1")
    write(d / "ratings.tsv.gz", "UserID\tMovieID\tRating\tTimestamp\tTsSource\n" + ML_1M_RATINGS)
    return d


def amazon_files(root: Path) -> tuple[Path, Path]:
    seqs = write(root / "amazon" / "Toy.txt", "1 5 3 9\n2 3 4\n10 5\n")
    attrs = write(root / "amazon" / "Toy_item2attributes.json", json.dumps({"3": [1, 2], "5": [2, 2, 7], "99": [4]}))
    return seqs, attrs


TAOBAO = (
    "1,100,7,pv,1511600000\n"
    "1,101,8,buy,1511500000\n"  # before 2017-11-25 00:00 UTC+8: outside the window, kept
    "2,100,7,cart,1511700000\n"
    "2,100,9,pv,1511800000\n"  # item 100 seen with category 7 twice and 9 once: keeps 7
    "3,102,8,fav,1511650000\n"
)


def taobao_file(root: Path) -> Path:
    return write(root / "taobao" / "UserBehavior.csv", TAOBAO)


def events(clog: ClickLog) -> list[tuple[str, str, int]]:
    return list(clog.events[["user_id", "item_id", "timestamp"]].itertuples(index=False, name=None))


# --- the contract every adapter meets --------------------------------------------------------------------------

SMALL: dict[str, Callable[[Path], tuple[ClickLog, AdapterReport]]] = {
    "ml-100k": lambda root: ml_100k(ml_100k_dir(root)),
    "ml-latest-small": lambda root: ml_latest_small(ml_latest_dir(root)),
    "ml-1m": lambda root: ml_1m(ml_1m_dir(root)),
    "amazon": lambda root: amazon(*amazon_files(root)),
    "taobao": lambda root: taobao(taobao_file(root)),
}


@pytest.mark.parametrize("name", SMALL)
def test_canonical_schema_and_report(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # contract: the columns and dtypes of `load_log`, sorted by (user, time), every row a positive; the report
    # accounts for every row read, and is logged
    with caplog.at_level(logging.INFO, logger="training.datasets"):
        clog, report = SMALL[name](tmp_path)
    ev = clog.events
    assert list(ev.columns) == ["user_id", "item_id", "timestamp", "event", "label"]
    assert pd.api.types.is_string_dtype(ev["user_id"]) and pd.api.types.is_string_dtype(ev["item_id"])
    assert ev["timestamp"].dtype == "int64" and ev["label"].dtype == "int8" and (ev["label"] == 1).all()
    assert ev.equals(ev.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True))
    assert report.dataset == name and report.rows_kept == len(ev)
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert report.line() in caplog.text
    if clog.items is not None:
        assert all(isinstance(c, tuple) and all(isinstance(v, str) for v in c) for c in clog.items.iloc[:, 1])
    if clog.users is not None:
        assert all(isinstance(v, str) for col in clog.users.columns for v in clog.users[col])


@pytest.mark.parametrize("name", SMALL)
def test_round_trip_through_load_log(name: str, tmp_path: Path) -> None:
    # contract: written to Parquet and read back by `load_log`, an adapter's log is unchanged
    clog, _ = SMALL[name](tmp_path)
    ev = clog.events if clog.has_time else clog.events.drop(columns="timestamp")
    ev.to_parquet(tmp_path / "events.parquet")
    paths = {}
    for table in ("items", "users"):
        frame = getattr(clog, table)
        if frame is not None:
            paths[table] = tmp_path / f"{table}.parquet"
            frame.assign(**{c: frame[c].map(list) for c in frame.columns[1:] if table == "items"}).to_parquet(
                paths[table]
            )
    again = load_log(tmp_path / "events.parquet", paths.get("items"), paths.get("users"))
    assert again.has_time == clog.has_time
    pd.testing.assert_frame_equal(again.events, clog.events)
    for table in ("items", "users"):
        if getattr(clog, table) is not None:
            pd.testing.assert_frame_equal(getattr(again, table), getattr(clog, table))


# --- MovieLens 100K ---------------------------------------------------------------------------------------------


def test_ml_100k(tmp_path: Path) -> None:
    clog, report = ml_100k(ml_100k_dir(tmp_path))
    assert events(clog) == [("1", "1", 100), ("1", "2", 200), ("2", "3", 100), ("2", "1", 300), ("3", "1", 50)]
    assert clog.has_time and set(clog.events["event"]) == {"click"}
    assert clog.items.to_dict("list") == {
        "item_id": ["1", "2", "3"],
        "genre": [("Comedy",), ("Action", "Comedy"), ()],  # "unknown" is no genre
    }
    assert clog.users.to_dict("list") == {
        "user_id": ["1", "2", "3"],
        "gender": ["M", "F", "M"],
        "age": ["18", "1", "56"],  # 24 -> 18-24, 17 -> under 18, 56 -> 56+
        "occupation": ["technician", "student", "retired"],
    }
    assert (report.rows_read, report.rows_kept, report.dropped) == (5, 5, {})


def test_ml_100k_min_rating(tmp_path: Path) -> None:
    clog, report = ml_100k(ml_100k_dir(tmp_path), min_rating=3)
    assert events(clog) == [("1", "1", 100), ("1", "2", 200), ("2", "1", 300)]
    assert report.dropped == {"rating < 3": 2}


@pytest.mark.parametrize(
    ("file", "line", "text", "expected"),
    [
        ("u.data", 3, "1\t2\t3", "3 fields, expected 4"),
        ("u.data", 2, "x\t2\t3\t200", "user_id 'x' is not a non-negative integer"),
        ("u.data", 4, "2\t3\t1\t12.5", "timestamp '12.5'"),
        ("u.data", 5, "3\t1\tgood\t50", "rating 'good' is not a number"),
        ("u.item", 2, "2|Café Society (1995)|01-Jan-1995||http://b|0|2|1", "genre flags"),
        ("u.item", 3, "3|Nothing (1995)|||http://c|1|0", "7 fields, expected 8"),
        ("u.user", 3, "3|old|M|retired|T8H1N", "age 'old'"),
        ("u.genre", 2, "Action", "1 fields, expected 2"),
    ],
)
def test_ml_100k_malformed(file: str, line: int, text: str, expected: str, tmp_path: Path) -> None:
    d = ml_100k_dir(tmp_path)
    replace_line(d / file, line, text, "utf-8" if file == "u.data" else "latin-1")
    with pytest.raises(DataValidationError, match=f"{file}, line {line}") as err:
        ml_100k(d)
    assert expected in str(err.value) and "fix:" in str(err.value)


def test_blank_lines_are_skipped_but_counted_in_line_numbers(tmp_path: Path) -> None:
    d = ml_100k_dir(tmp_path)
    write(d / "u.data", "1\t1\t4\t100\n\n  \n1\t2\t3\n")
    with pytest.raises(DataValidationError, match="u.data, line 4: 3 fields"):
        ml_100k(d)


def test_missing_file_and_not_a_directory(tmp_path: Path) -> None:
    d = ml_100k_dir(tmp_path)
    (d / "u.genre").unlink()
    with pytest.raises(DataValidationError, match="u.genre: file not found"):
        ml_100k(d)
    with pytest.raises(DataValidationError, match="not a directory"):
        ml_100k(d / "u.data")


# --- MovieLens latest-small -------------------------------------------------------------------------------------


def test_ml_latest_small(tmp_path: Path) -> None:
    clog, report = ml_latest_small(ml_latest_dir(tmp_path))
    assert events(clog) == [("1", "20", 50), ("1", "10", 100), ("2", "10", 10)]
    assert clog.has_time and clog.users is None
    # the catalogue is movies.csv, rated or not; a quoted title with a comma parses
    assert clog.items.to_dict("list") == {"item_id": ["10", "20", "30"], "genre": [("Action", "Crime"), (), ("Drama",)]}
    assert report.dropped == {}
    clog, report = ml_latest_small(ml_latest_dir(tmp_path), min_rating=3.5)
    assert events(clog) == [("1", "10", 100)]
    assert report.dropped == {"rating < 3.5": 2}


@pytest.mark.parametrize(
    ("file", "line", "text", "expected"),
    [
        ("ratings.csv", 3, "1,20,abc,50", "rating 'abc' is not a number"),
        ("ratings.csv", 1, "1,10,4.0,100", "the header"),
        ("ratings.csv", 4, "2,10,0.5", "3 fields, expected 4"),
        ("ratings.csv", 2, "1,10,4.0,-5", "timestamp '-5'"),
        ("movies.csv", 3, "20,Toy Story (1995)", "2 fields, expected 3"),
        ("movies.csv", 4, "10,Again (1999),Drama", "item 10 again (first on line 2)"),
    ],
)
def test_ml_latest_small_malformed(file: str, line: int, text: str, expected: str, tmp_path: Path) -> None:
    d = ml_latest_dir(tmp_path)
    replace_line(d / file, line, text)
    with pytest.raises(DataValidationError, match=f"{file}, line {line}") as err:
        ml_latest_small(d)
    assert expected in str(err.value)


# --- MovieLens 1M -------------------------------------------------------------------------------------------------


def test_ml_1m(tmp_path: Path) -> None:
    clog, report = ml_1m(ml_1m_dir(tmp_path))
    assert events(clog) == [("1", "20", 100), ("1", "10", 300)]
    # lower ratings first, then the untimed among the rest: user 2's 4 without a timestamp
    assert report.dropped == {"rating < 4": 2, "no timestamp": 1}
    assert clog.items.to_dict("list") == {
        "item_id": ["10", "20", "30"],
        "genre": [("Action", "Crime"), ("Comedy", "Romance"), ("Drama",)],
    }
    assert clog.users.to_dict("list") == {
        "user_id": ["1", "2"],
        "gender": ["F", "M"],
        "age": ["1", "56"],
        "occupation": ["10", "16"],
        "zip1": ["4", "9"],
    }


def test_ml_1m_all_ratings_never_places_untimed_ones(tmp_path: Path) -> None:
    clog, report = ml_1m(ml_1m_dir(tmp_path), min_rating=None)
    assert events(clog) == [("1", "20", 100), ("1", "10", 300), ("2", "10", 50)]
    assert report.dropped == {"no timestamp": 2}


def test_ml_1m_orders_clicks_at_the_same_second_by_movie_id(tmp_path: Path) -> None:
    d = ml_1m_dir(tmp_path)
    write(
        d / "ratings.tsv.gz",
        "UserID\tMovieID\tRating\tTimestamp\tTsSource\n2\t30\t5\t70\t\n1\t20\t4\t100\t\n1\t10\t5\t100\t\n"
        "2\t10\t4\t70\t\n2\t20\t4\t60\t\n",
    )
    clog, _ = ml_1m(d)
    assert events(clog) == [("1", "10", 100), ("1", "20", 100), ("2", "20", 60), ("2", "10", 70), ("2", "30", 70)]


def test_ml_1m_original_ratings_dat(tmp_path: Path) -> None:
    d = ml_1m_dir(tmp_path)
    (d / "ratings.tsv.gz").unlink()
    rows = [r.split("\t")[:4] for r in ML_1M_RATINGS.splitlines()]
    write(d / "ratings.dat", "".join("::".join(r) + "\n" for r in rows))
    clog, report = ml_1m(d)
    assert events(clog) == [("1", "20", 100), ("1", "10", 300)]
    assert report.dropped == {"rating < 4": 2, "no timestamp": 1}


@pytest.mark.parametrize(
    ("file", "line", "text", "expected"),
    [
        ("ratings.tsv.gz", 3, "1\t20\t4\t100", "4 fields, expected 5"),
        ("ratings.tsv.gz", 5, "2\t10\t3\tsoon\tval", "Timestamp 'soon'"),
        ("ratings.tsv.gz", 1, "UserID\tItemID\tRating\tTimestamp\tTsSource", "lacks ['MovieID']"),
        ("movies.dat", 2, "20::Amélie (2001)", "2 fields, expected 3"),
        ("users.dat", 2, "2::M::x::16::98107", "age 'x'"),
    ],
)
def test_ml_1m_malformed(file: str, line: int, text: str, expected: str, tmp_path: Path) -> None:
    d = ml_1m_dir(tmp_path)
    replace_line(d / file, line, text, "utf-8" if file.startswith("ratings") else "latin-1")
    with pytest.raises(DataValidationError, match=f"{file}, line {line}") as err:
        ml_1m(d)
    assert expected in str(err.value)


def test_nothing_kept_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="no rows kept"):
        ml_1m(ml_1m_dir(tmp_path), min_rating=6)


# --- Amazon sequences ---------------------------------------------------------------------------------------------


def test_amazon(tmp_path: Path) -> None:
    seqs, attrs = amazon_files(tmp_path)
    clog, report = amazon(seqs)
    # no timestamps: file order within a user, ordinal positions; users sorted as strings ("10" < "2")
    assert not clog.has_time and clog.items is None
    assert events(clog) == [("1", "5", 0), ("1", "3", 1), ("1", "9", 2), ("10", "5", 0), ("2", "3", 0), ("2", "4", 1)]
    assert (report.rows_read, report.rows_kept, report.dropped) == (6, 6, {})

    clog, report = amazon(seqs, attributes=attrs)
    assert clog.items.to_dict("list") == {
        "item_id": ["3", "4", "5", "9", "99"],
        "attributes": [("1", "2"), (), ("2", "7"), (), ("4",)],  # repeats removed; no attributes: empty
    }
    assert report.notes == {
        "log items without attributes": 2,
        "attribute items not in the log": 1,
        "repeated attribute ids removed": 1,
    }


@pytest.mark.parametrize(
    ("line", "text", "expected"),
    [
        (2, "2", "user '2' has no items"),
        (3, "10 5 x", "item_id 'x' is not a non-negative integer"),
        (2, "u2 3 4", "user_id 'u2'"),
        (3, "1 7", "user 1 again (first on line 1)"),
    ],
)
def test_amazon_malformed(line: int, text: str, expected: str, tmp_path: Path) -> None:
    seqs, _ = amazon_files(tmp_path)
    replace_line(seqs, line, text)
    with pytest.raises(DataValidationError, match=f"Toy.txt, line {line}") as err:
        amazon(seqs)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ('{"3": [1, 2],\n "5": [2,,7]}', 2, "invalid JSON"),
        ('{"3": [1, 2],\n "5": 7}', 2, "item 5: 7 is not a list of ids"),
        ('{"3": [1],\n\n "five": [2]}', 3, "item id 'five'"),
        ("[[1, 2]]", 1, "not an object"),
    ],
)
def test_amazon_bad_attributes(text: str, line: int, expected: str, tmp_path: Path) -> None:
    seqs, attrs = amazon_files(tmp_path)
    write(attrs, text)
    with pytest.raises(DataValidationError, match=f"item2attributes.json, line {line}") as err:
        amazon(seqs, attrs)
    assert expected in str(err.value)


# --- Taobao UserBehavior --------------------------------------------------------------------------------------------


def test_taobao(tmp_path: Path) -> None:
    clog, report = taobao(taobao_file(tmp_path))
    ev = clog.events
    assert clog.has_time
    assert list(ev["user_id"]) == ["1", "1", "2", "2", "3"]
    assert list(ev["event"]) == ["buy", "pv", "cart", "pv", "fav"]  # sorted by time within a user
    assert (ev["label"] == 1).all()
    assert clog.items.to_dict("list") == {"item_id": ["100", "101", "102"], "category": [("7",), ("8",), ("8",)]}
    assert report.dropped == {}
    assert report.notes == {
        "items with several categories (kept the most frequent)": 1,
        "timestamps outside 2017-11-25..12-03 UTC+8 (kept)": 1,
    }


def test_taobao_clicks_only(tmp_path: Path) -> None:
    clog, report = taobao(taobao_file(tmp_path), behaviors=("pv",))
    assert events(clog) == [("1", "100", 1511600000), ("2", "100", 1511800000)]
    assert report.dropped == {"behavior cart": 1, "behavior fav": 1, "behavior buy": 1}
    assert len(clog.items) == 3  # item metadata comes from every row
    with pytest.raises(InvalidArgument, match="behaviors"):
        taobao(taobao_file(tmp_path), behaviors=("click",))


def test_taobao_windows_line_ends(tmp_path: Path) -> None:
    path = write(tmp_path / "ub.csv", TAOBAO.replace("\n", "\r\n"))
    clog, _ = taobao(path)
    assert len(clog.events) == 5 and set(clog.events["event"]) == {"pv", "cart", "fav", "buy"}


@pytest.mark.parametrize(
    ("line", "text", "expected"),
    [
        (2, "1,101,8,buy", "4 fields, expected 5"),
        (3, "2,100,7,click,1511700000", "behavior 'click'"),
        (1, "user_id,item_id,category_id,behavior_type,timestamp", "user_id 'user_id'"),  # a header
        (4, "2,100,9,pv,-1", "timestamp '-1'"),
        (5, "3,10.2,8,fav,1511650000", "item_id '10.2'"),
    ],
)
def test_taobao_malformed(line: int, text: str, expected: str, tmp_path: Path) -> None:
    path = taobao_file(tmp_path)
    replace_line(path, line, text)
    with pytest.raises(DataValidationError, match=f"UserBehavior.csv, line {line}") as err:
        taobao(path)
    assert expected in str(err.value)


# --- the registry ---------------------------------------------------------------------------------------------------


def test_load_dataset(tmp_path: Path) -> None:
    assert set(DATASETS) == {"ml-100k", "ml-latest-small", "ml-1m", "amazon", "taobao"}
    for make, name in ((ml_100k_dir, "ml-100k"), (ml_latest_dir, "ml-latest-small"), (ml_1m_dir, "ml-1m")):
        _, report = load_dataset("movielens", make(tmp_path))
        assert report.dataset == name
    _, report = load_dataset("ml-1m", str(tmp_path / "ml-1m"), min_rating=5)
    assert report.rows_kept == 1
    seqs, attrs = amazon_files(tmp_path)
    clog, _ = load_dataset("amazon", seqs, attributes=str(attrs))
    assert list(clog.items.columns) == ["item_id", "attributes"]


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown dataset 'nope'.*ml-100k, ml-latest-small, ml-1m, amazon"):
        load_dataset("nope", tmp_path)
    with pytest.raises(InvalidArgument, match="'taobao' has no option 'min_rating'"):
        load_dataset("taobao", taobao_file(tmp_path), min_rating=4)
    with pytest.raises(InvalidArgument, match="'ml-1m' has no option 'attributes'"):
        load_dataset("ml-1m", ml_1m_dir(tmp_path), attributes="a.json")
    with pytest.raises(DataValidationError, match="no MovieLens ratings file"):
        load_dataset("movielens", tmp_path)


def test_report_line() -> None:
    report = AdapterReport("x", 10, 7, {"rating < 4": 3}, {"outside": 1})
    assert report.line() == "x: read 10 rows, kept 7; dropped: rating < 4: 3; notes: outside: 1"


# --- the command line -----------------------------------------------------------------------------------------------


def fit(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "training", "fit", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_unknown_dataset(tmp_path: Path) -> None:
    proc = fit("--dataset", "nope", "--path", "x", "--out", str(tmp_path / "y"))
    assert proc.stderr.strip().splitlines() == [error_line(proc)]
    assert "unknown dataset 'nope'" in proc.stderr and "amazon" in proc.stderr


def test_cli_malformed_dataset(tmp_path: Path) -> None:
    seqs, _ = amazon_files(tmp_path)
    replace_line(seqs, 2, "2")
    line = error_line(fit("--dataset", "amazon", "--path", str(seqs), "--out", str(tmp_path / "y")))
    assert "Toy.txt, line 2" in line and "fix:" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--out", "y"], "--log FILE or --dataset NAME, neither was given"),
        (["--log", "a.csv", "--dataset", "amazon", "--out", "y"], "both were given"),
        (["--dataset", "amazon", "--out", "y"], "needs --path"),
        (["--log", "a.csv", "--min-rating", "4", "--out", "y"], "--min-rating goes with --dataset"),
    ],
)
def test_cli_source_arguments(args: list[str], expected: str) -> None:
    proc = fit(*args)
    assert proc.stderr.strip().splitlines() == [error_line(proc)]
    assert expected in proc.stderr


# --- the public logs in ../shared/data ---------------------------------------------------------------------------


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the public logs live in ../shared/data (see its README)")
    return path


@pytest.mark.data
def test_shared_ml_100k() -> None:
    clog, report = ml_100k(shared("ml-100k"))
    assert (len(clog.events), clog.events["user_id"].nunique(), clog.events["item_id"].nunique()) == (
        100_000,
        943,
        1_682,
    )
    assert (len(clog.items), len(clog.users), report.dropped) == (1_682, 943, {})
    assert set(clog.users["age"]) <= {"1", "18", "25", "35", "45", "50", "56"}


@pytest.mark.data
def test_shared_ml_latest_small() -> None:
    clog, report = ml_latest_small(shared("ml-latest-small"))
    assert (len(clog.events), clog.events["user_id"].nunique(), clog.events["item_id"].nunique()) == (
        100_836,
        610,
        9_724,
    )
    assert len(clog.items) == 9_742 and report.notes == {}


@pytest.mark.data
def test_shared_ml_1m() -> None:
    clog, report = ml_1m(shared("ml-1m"), min_rating=4)
    assert len(clog.events) == 575_281 and clog.has_time
    assert report.rows_read == 1_000_209
    assert report.dropped == {"rating < 4": 1_000_209 - 575_281, "no timestamp": 0}  # every click is timestamped
    assert clog.events["user_id"].nunique() <= 6_040 and len(clog.users) == 6_040
    assert len(clog.items) == 3_883


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "rows", "users", "items"),
    [("Beauty", 198_502, 22_363, 12_101), ("Sports_and_Outdoors", 296_337, 35_598, 18_357)],
)
def test_shared_amazon(name: str, rows: int, users: int, items: int) -> None:
    clog, report = amazon(shared("amazon", f"{name}.txt"), shared("amazon", f"{name}_item2attributes.json"))
    ev = clog.events
    assert (len(ev), ev["user_id"].nunique(), ev["item_id"].nunique()) == (rows, users, items)
    assert not clog.has_time and len(clog.items) == items
    assert report.notes["log items without attributes"] == 0 and clog.items["attributes"].map(len).min() > 0


@pytest.mark.data
def test_shared_taobao() -> None:
    clog, report = taobao(shared("taobao", "UserBehavior_head.csv"))
    assert len(clog.events) == 4_321 and clog.events["user_id"].nunique() == 43
    assert clog.events["event"].value_counts().to_dict() == {"pv": 3_926, "cart": 190, "fav": 128, "buy": 77}
    assert clog.events["item_id"].nunique() == 3_276 and len(clog.items) == 3_276
    assert clog.items["category"].map(lambda c: c[0]).nunique() == 567
    assert report.notes["timestamps outside 2017-11-25..12-03 UTC+8 (kept)"] == 1  # the 2017-09-11 outlier
