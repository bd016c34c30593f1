"""The benchmarks run end to end at toy sizes, so they cannot rot between the runs that fill the
README. These assert that the pieces work (real redis-server, real servers, zero errors) and that
the JSON has the documented keys; they time nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_bench_serve_runs_against_real_redis_and_servers(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    done = _run(
        "bench.serve",
        *("--items", "400", "--users", "60", "--events", "12", "--candidates", "50", "--levels", "1,4"),
        *("--requests", "40", "--rate", "50", "--baseline-requests", "20", "--repeat", "2"),
        *("--json", str(out), "--set", "model.mlp_dims=[64,32]"),  # no --plot: it goes beside the JSON
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["candidates"] == 50 and result["catalog"] == 400
    assert result["mlp_dims"] == [64, 32] and "MLP [64, 32]" in done.stdout  # the served artifact took --set
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 4, None]  # the last is the fixed-rate level
    for level in [*result["levels"], result["baseline"]]:
        assert level["errors"] == 0, level
        assert {"p50_ms", "p95_ms", "p99_ms", "rps"} <= set(level) and level["p50_ms"] <= level["p99_ms"]
    assert result["levels"][0]["retrieval_and_ranking_ms"] > 0  # the stage histograms were read
    for level in result["levels"]:  # the server's own call-duration histogram was read
        assert 0 <= level["server_within_50ms"] <= level["server_within_100ms"] <= 1, level
        assert level["server_within_100ms"] > 0, level
        assert level["server_gc_ms"] >= 0 and level["server_full_gcs"] >= 0, level  # its collector's pauses
    # each user asked twice: the default server's user-state cache hits (counted by its own metrics);
    # the baseline runs without one
    assert all(lv["state_cache_hit_rate"] >= 0.3 for lv in result["levels"]), result["levels"]
    assert all(lv["state_cache_hit_rate"] == 0 for lv in result["baseline_levels"])
    assert (tmp_path / "serve.png").stat().st_size > 0  # beside --json, not in the working directory
    assert "baseline / fast" in done.stdout


def test_bench_serve_drives_every_process_of_a_multi_process_server(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    done = _run(
        "bench.serve",
        *("--items", "400", "--users", "60", "--events", "12", "--candidates", "50", "--levels", "4"),
        *("--requests", "40", "--rate", "0", "--baseline-requests", "10", "--processes", "2"),
        *("--json", str(out), "--set", "model.mlp_dims=[64,32]"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and "--processes 2" in done.stdout
    (level,) = result["levels"]
    assert level["errors"] == 0 and level["retrieval_and_ranking_ms"] > 0, level  # both processes' metrics read
    # four callers over the two processes' own ports, two on each (a caller takes the next call when it is
    # free, so the split is near even, not exact)
    assert len(level["process_shares"]) == 2 and min(level["process_shares"]) > 0.25, level
    assert result["baseline"]["process_shares"] == [1.0]


def test_bench_retrieval_prints_the_recall_latency_table(tmp_path: Path) -> None:
    out = tmp_path / "retrieval.json"
    done = _run(
        "bench.retrieval", "--items", "3000", "--queries", "50", "--ef", "64", "--nprobe", "64", "--json", str(out)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["index"].split()[0] for r in rows] == ["flat", "HNSW", "IVF"]
    assert rows[0]["recall"] == 1.0 and all(0 < r["recall"] <= 1 for r in rows)


def test_bench_train_compares_one_and_two_processes_and_the_shuffles(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    done = _run("bench.train", "--users", "80", "--items", "80", "--epochs", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"1 process", "2 processes (torchrun)", "1 process, examples shuffled one by one"}
    for r in runs.values():
        assert r["examples_per_second"] > 0 and 0 <= r["valid_ndcg@10"] <= 1 and 0 <= r["valid_auc"] <= 1
    assert "vs 1 process" in done.stdout


def test_bench_rank_compares_reference_fp32_bf16_and_int8(tmp_path: Path) -> None:
    out = tmp_path / "rank.json"
    done = _run(
        "bench.rank", "--candidates", "20", "--repeats", "3", "--json", str(out), "--set", "model.mlp_dims=[64]"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mlp_dims"] == [64] and "MLP (64,)" in done.stdout
    (row,) = report["rows"]
    for kind in ("reference", "fast_fp32", "fast_bf16", "fast_int8"):
        assert 0 < row[f"{kind}_p50_ms"] <= row[f"{kind}_p99_ms"]
    assert 0 <= row["bf16_max_prob_gap"] < 0.05 and 0 <= row["int8_max_prob_gap"] < 0.05


def test_bench_quality_scores_the_int8_and_bf16_servers_beside_fp32_and_auc_on_every_user(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    done = _run(
        "bench.quality",
        *("--dataset", "synthetic", "--synth-users", "120", "--synth-items", "100", "--epochs", "1"),
        *("--models", "bst,popular", "--precisions", "int8,bf16", "--eval-users", "40", "--json", str(out)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    models = report["models"]
    # --eval-users bounds the ranking protocols; the CTR pairs (two scores a user) cover every test user
    assert report["notes"]["0"]["test_users"] == 40 and report["notes"]["0"]["ctr_pairs"] > 100
    assert {"bst", "served", "retrieval", "bst-fast-fp32", "bst-int8", "bst-bf16", "popular"} <= set(models)
    for low in ("bst-int8", "bst-bf16"):
        for key in ("auc", "gauc", "hr@10", "ndcg@10"):
            assert 0 <= models[low][key] <= 1
        assert abs(models[low]["auc"] - models["bst-fast-fp32"]["auc"]) < 0.05  # the same scorer, lower precision
        assert f"| {low} |" in done.stdout  # and printed beside fp32
    # what model selection saw: the chosen epoch's validation metrics, per seed and printed
    fitted = report["per_seed"]["0"]["bst"]
    assert 0 < fitted["valid_auc"] <= 1 and 0 <= fitted["valid_ndcg@10"] <= 1
    assert "valid_auc" not in report["per_seed"]["0"]["popular"]  # nothing was selected for it
    assert "### Validation, the chosen epoch" in done.stdout
    # the serving depth and blend the export chose on validation, what they scored there, and the ranker alone
    assert fitted["served_depth"] in (10, 20, 50, 100, 200) and 0 <= fitted["valid_served_ndcg@10"] <= 1
    assert fitted["served_blend"] in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0) and 0 <= fitted["valid_served_ndcg@10_w0"] <= 1
    assert "### Serving depth K and blend weight w, chosen on validation" in done.stdout
    serving = report["notes"]["0"]["serving"]
    assert (serving["retrieval_depth"], serving["retrieval_blend"]) == (fitted["served_depth"], fitted["served_blend"])
    assert serving["grid"]["0.0"][str(int(fitted["served_depth"]))]["ndcg@10"] == fitted["valid_served_ndcg@10_w0"]
    assert f"-> K = {int(fitted['served_depth'])}, w = {fitted['served_blend']:g}" in done.stdout
    assert "blend w = 0: 10: " in done.stdout
    # each blend's row once, the chosen one marked
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith("seed 0, blend w = ")]
    assert len(rows) == len(serving["grid"]) and len(set(rows)) == len(rows)
    assert [r for r in rows if r.endswith(" (chosen)")] == [
        r for r in rows if r.startswith(f"seed 0, blend w = {fitted['served_blend']:g}: ")
    ]


def test_bench_memory_generator_writes_a_time_ordered_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the 20M-event generator at toy size: exactly N events, written in global time order over several
    # Parquet parts, every user with >= 5 clicks (so leave-one-out keeps them), and `load_log` reads it
    import numpy as np
    import pandas as pd

    from bench import memory
    from recsys.data import load_log

    monkeypatch.setattr(memory, "PART_ROWS", 700)
    paths = memory.generate(tmp_path, n_events=3_000, n_users=100, n_items=500)
    assert len(list(paths["clicks"].glob("*.parquet"))) == 5
    raw = pd.read_parquet(paths["clicks"])
    assert len(raw) == 3_000 and raw["timestamp"].is_monotonic_increasing
    clog = load_log(paths["clicks"], paths["items"])
    per_user = clog.events.groupby("user_id").size()
    assert len(per_user) == 100 and per_user.min() >= 5
    assert clog.items is not None and set(clog.events["item_id"]) <= set(clog.items["item_id"])
    assert np.all(np.diff(clog.events.groupby("user_id")["timestamp"].apply(list).iloc[0]) > 0)


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        (
            "bench.quality",
            ("--dataset", "synthetic", "--precisions", "int8,fp16"),
            "--precisions fp16: unknown; fix: use int8 and/or bf16",
        ),
        ("bench.quality", ("--dataset", "synthetic", "--resume"), "--resume needs --json, the file of the run"),
        ("bench.serve", ("--repeat", "0"), "--repeat must be >= 1, got 0"),
        ("bench.serve", ("--set", "train.epochs=2"), "unknown section 'train'; fix: start with one of ['model']"),
        ("bench.rank", ("--set", "model.pooling=flatten"), "model.pooling='flatten': every behavior output depends"),
        ("bench.rank", ("--set", "model.mlp_dims=256"), "model.mlp_dims: expected a list, got 256"),
    ],
)
def test_bench_bad_options_exit_2_with_the_fix(module: str, args: tuple[str, ...], expected: str) -> None:
    done = _run(module, *args)
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr


def test_bench_quality_resume_keeps_finished_seeds_and_refuses_another_command(tmp_path: Path) -> None:
    out = tmp_path / "q.json"
    small = ("--dataset", "synthetic", "--synth-users", "80", "--synth-items", "60", "--models", "popular")
    first = _run("bench.quality", *small, "--seeds", "1", "--json", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    seed0 = json.loads(out.read_text())["per_seed"]["0"]
    out.write_text(out.read_text().replace(str(seed0["popular"]["auc"]), "0.123456789"))  # kept, not recomputed
    done = _run("bench.quality", *small, "--seeds", "2", "--resume", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1] and report["per_seed"]["0"]["popular"]["auc"] == 0.123456789
    assert "seed 0: kept from" in done.stderr and set(report["per_seed"]["1"]) == {"popular"}
    other = _run("bench.quality", *small[:-1], "popular,itemknn", "--seeds", "3", "--resume", "--json", str(out))
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds a run with models=['popular'], this command has ['popular', 'itemknn']" in other.stderr
