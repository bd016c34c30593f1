"""End-to-end serving benchmark: the real server over loopback gRPC against a real Redis.

    python -m bench.serve [--items 100000] [--candidates 500] [--levels 1,4,16] [--rate 100] [--repeat R]
                          [--json OUT]

No arguments needed: it starts its own throwaway `redis-server` and servers, and cleans up after.

1. Builds a catalogue of `--items` items and `--users` users with the synthetic generator, and
   exports an artifact with the production code (`recsys.artifact.save`; the FAISS index the catalogue
   size calls for). Weights are freshly initialised, not trained: latency does not depend on them,
   and training a 100k-item model would dominate the run. Quality is `bench/quality.py`'s job.
2. Bulk-loads the users' histories into Redis with `python -m serving.features load`.
3. Starts `python -m serving` (its defaults: fast scorer, user-state cache, one model thread batching
   concurrent requests; plus `--server-args`) and drives Recommend from this process
   (a grpc.aio client; a separate process from the server) with `--candidates` candidates retrieved
   and ranked per request and the top 10 returned, for `--requests` requests at each concurrency
   level, then open-loop at a fixed offered rate (latency counted from each request's scheduled
   send time, so a stall is not hidden by the client waiting). By default each request's user is drawn
   at random from all users, so the user-state cache rarely hits; `--repeat R` asks for each drawn
   user R times (R rounds over the same users, so a repeat is never in flight beside its first
   request: a user coming back to refresh or page), and the tables give the hit rate the server's own
   counters saw.
4. Restarts the server as the naive baseline: the reference `score` (fp32, no single-pass scoring),
   no user-state cache and no batching (`NAIVE_FLAGS`), and drives it the same way.
5. Prints p50/p95/p99, throughput and errors per level for both, their p50 ratio, the per-stage
   breakdown from the server's own Prometheus histograms, the share of calls the server itself finished
   within 50 and 100 ms (its call-duration histogram: a tail there is the server's, not the driver's),
   the server's garbage-collector pauses (`recsys_gc_pause_seconds`), and saves a latency plot (PNG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from proto.recsys.v1 import recommender_pb2 as pb
from proto.recsys.v1 import recommender_pb2_grpc as pb_grpc
from recsys.config import check_prefixes
from recsys.errors import InvalidArgument
from serving.processes import reserve_ports

log = logging.getLogger("bench.serve")
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("queue", "feature_fetch", "batch_wait", "retrieval_and_ranking", "serialization")
# the naive baseline: the reference score, fp32, no user-state cache, no model thread (each of 4 workers
# computes its own request on 1 intra-op thread: the server's behaviour before batching)
NAIVE_FLAGS = [
    "--scorer",
    "reference",
    "--state-cache",
    "0",
    "--precision",
    "fp32",
    "--cache-size",
    "0",
    "--batch-max",
    "0",
    "--workers",
    "4",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------ setup


def build_artifact(
    work: Path, items: int, users: int, events: float, seed: int, overrides: list[str]
) -> tuple[Path, Path, list[str]]:
    """A synthetic log (written as Parquet) and an artifact over its catalogue, the model configured by the
    defaults plus `overrides` (`model.mlp_dims=[256,128]`); returns (artifact, log, users)."""
    import torch

    from recsys import artifact
    from recsys.data import load_log
    from training import synth
    from training.dataset import EncodedLog
    from training.pipeline import SEED_HISTORY, build_model, configs, popular_list

    cfg = synth.SynthConfig(
        n_users=users,
        n_items=items,
        n_categories=max(5, min(200, items // 50)),
        n_brands=max(10, min(1000, items // 10)),
        events_per_user=events,
        seed=seed,
    )
    paths = synth.write(cfg, work / "log")
    clog = load_log(paths["clicks"], paths["items"], paths["users"])
    model_cfg, _ = configs(overrides)
    torch.manual_seed(seed)
    model, feats = build_model(clog, model_cfg)
    data = EncodedLog.build(clog, feats)
    path = artifact.save(
        work / "artifacts",
        model,
        feats,
        popular_list(data.popularity),
        data.seed_table(SEED_HISTORY),
        {**clog.summary(), "note": "bench.serve: untrained weights (speed only)"},
        {},
    )
    return path, paths["clicks"], sorted(clog.events["user_id"].unique().tolist())


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("error: redis-server not found; fix: apt-get install -y redis-server (or make test once)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclasses.dataclass
class Server:
    proc: subprocess.Popen[str]
    target: str  # the shared port
    metrics_urls: list[str]  # one a server process (`--processes`)
    log_path: Path
    processes: int = 1

    @property
    def targets(self) -> list[str]:
        """What the driver dials: the port, or with several processes each one's own port
        (`serving.processes`), so that each takes an equal share of the calls; over the shared port
        the kernel spreads connections at random, and one channel is one connection."""
        if self.processes == 1:
            return [self.target]
        host, port = self.target.rsplit(":", 1)
        return [f"{host}:{int(port) + 1 + i}" for i in range(self.processes)]


@contextlib.contextmanager
def server(
    artifact: Path, features: str, work: Path, name: str, extra: list[str], processes: int = 1
) -> Iterator[Server]:
    # the port and, with several processes, one of each's own after it; the metrics ports in a row
    port = reserve_ports("127.0.0.1", 0, processes if processes > 1 else 0)
    mport = reserve_ports("127.0.0.1", 0, processes - 1)
    log_path = work / f"server-{name}.log"
    cmd = [sys.executable, "-m", "serving", "--artifact", str(artifact), "--features", features]
    cmd += ["--port", str(port), "--metrics-port", str(mport), "--reload-interval", "0"]
    cmd += ["--processes", str(processes), *extra]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    urls = [f"http://127.0.0.1:{mport + i}/metrics" for i in range(processes)]
    s = Server(proc, f"127.0.0.1:{port}", urls, log_path, processes)
    try:
        wait_ready(s)
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(s: Server, timeout: float = 180.0) -> None:
    """Until the server answers health checks and every process's metrics endpoint answers (with
    `--processes`, a health check reaches whichever process took the connection)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            raise SystemExit(f"error: the server exited ({s.proc.returncode}); see {s.log_path}")
        with contextlib.suppress(grpc.RpcError, OSError), grpc.insecure_channel(s.target) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                scrape(s.metrics_urls)  # raises until every process is up
                return
        time.sleep(0.3)
    raise SystemExit(f"error: the server did not become ready in {timeout:.0f} s; see {s.log_path}")


# ------------------------------------------------------------------------------------ load


def scrape(metrics_urls: list[str]) -> str:
    """The server's Prometheus exposition, once per snapshot (every reading below parses it); with
    several processes their expositions one after another (the readings below add samples up)."""
    return "\n".join(str(urllib.request.urlopen(u, timeout=5).read().decode()) for u in metrics_urls)


def process_shares(before: list[str], after: list[str]) -> list[float]:
    """Each process's share of the Recommend calls between two per-process snapshots."""
    calls = [
        histogram_totals(a, "recsys_grpc_request_duration_seconds", "method").get("Recommend", (0.0, 0.0))[1]
        - histogram_totals(b, "recsys_grpc_request_duration_seconds", "method").get("Recommend", (0.0, 0.0))[1]
        for b, a in zip(before, after, strict=True)
    ]
    total = sum(calls)
    return [c / total if total else 0.0 for c in calls]


def label_value(name: str, key: str) -> str:
    """The value of label `key` in a sample name such as `x_total{result="hit"}`."""
    return name.split(f'{key}="', 1)[1].split('"', 1)[0]


def histogram_totals(text: str, metric: str, key: str, where: str = "") -> dict[str, tuple[float, float]]:
    """(sum, count) per value of label `key` of histogram `metric`, from an exposition (`scrape`), over
    the samples whose line contains `where` (say 'method="Recommend"')."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, i in (("_sum{", 0), ("_count{", 1)):
            if line.startswith(metric + suffix) and where in line:
                name, value = line.rsplit(" ", 1)
                out.setdefault(label_value(name, key), [0.0, 0.0])[i] += float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_sums(text: str) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) per Recommend stage, from an exposition (`scrape`)."""
    totals = histogram_totals(text, "recsys_stage_duration_seconds", "stage", 'method="Recommend"')
    return {stage: totals.get(stage, (0.0, 0.0)) for stage in STAGES}


def cache_counts(text: str) -> tuple[float, float]:
    """(hits, misses) of the served model's user-state cache, from an exposition (`scrape`)."""
    counts = {"hit": 0.0, "miss": 0.0}
    for line in text.splitlines():
        if line.startswith("recsys_state_cache_lookups_total{"):
            name, value = line.rsplit(" ", 1)
            result = label_value(name, "result")
            counts[result] = counts.get(result, 0.0) + float(value)
    return counts["hit"], counts["miss"]


SERVER_BOUNDS = ("0.05", "0.1")  # seconds: buckets of recsys_grpc_request_duration_seconds (serving.metrics)


def server_buckets(text: str) -> dict[str, float]:
    """Cumulative Recommend calls per `le` bound of the server's own call-duration histogram."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("recsys_grpc_request_duration_seconds_bucket{") and 'method="Recommend"' in line:
            name, value = line.rsplit(" ", 1)
            le = label_value(name, "le")
            out[le] = out.get(le, 0.0) + float(value)
    return out


def server_shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Share of the calls between two snapshots that the server finished within each SERVER_BOUNDS
    bound (handler entry to response, so the driver's own scheduling on the shared cores is out)."""
    n = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    return {
        f"server_within_{float(b) * 1e3:.0f}ms": (after.get(b, 0.0) - before.get(b, 0.0)) / n if n else 0.0
        for b in SERVER_BOUNDS
    }


def gc_delta(before_text: str, after_text: str) -> dict[str, float]:
    """The server's collector between two expositions: full collections (generation 2) and their pause
    time, and the pause time of all collections (`recsys_gc_pause_seconds`)."""
    before, after = (histogram_totals(t, "recsys_gc_pause_seconds", "generation") for t in (before_text, after_text))
    zero = (0.0, 0.0)
    return {
        "server_full_gcs": after.get("2", zero)[1] - before.get("2", zero)[1],
        "server_full_gc_ms": 1e3 * (after.get("2", zero)[0] - before.get("2", zero)[0]),
        "server_gc_ms": 1e3 * sum(after.get(g, zero)[0] - before.get(g, zero)[0] for g in ("0", "1", "2")),
    }


def stage_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    means = {}
    for stage in STAGES:
        ds, dc = after[stage][0] - before[stage][0], after[stage][1] - before[stage][1]
        means[f"{stage}_ms"] = 1e3 * ds / dc if dc else 0.0
    return means


async def drive(
    targets: list[str],
    users: list[str],
    n: int,
    concurrency: int,
    rate: float | None,
    depth: int,
    seed: int,
    repeat: int = 1,
) -> dict[str, Any]:
    """`n` Recommend calls: closed loop with `concurrency` callers, or open loop at `rate` per second.
    Users are drawn at random, `repeat` rounds over the same ceil(n / repeat) users. With several
    `targets` (a server's processes), a channel to each: closed-loop caller i calls through channel
    i mod len(targets), open-loop call i likewise, so each process takes an equal share."""
    rng = np.random.default_rng(seed)
    drawn = [users[i] for i in rng.integers(0, len(users), -(-n // repeat))]
    picks = (drawn * repeat)[:n]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        stubs = [
            pb_grpc.RecommenderStub(await stack.enter_async_context(grpc.aio.insecure_channel(t))) for t in targets
        ]

        async def one(user: str, scheduled: float, stub: pb_grpc.RecommenderStub) -> None:
            try:
                await stub.Recommend(pb.RecommendRequest(user_id=user, k=10, retrieval_depth=depth), timeout=10.0)
                latencies.append(time.perf_counter() - scheduled)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1

        for i, user in enumerate(picks[: max(min(20, n), len(stubs))]):  # warm-up: connections, caches, lazy init
            await one(user, time.perf_counter(), stubs[i % len(stubs)])
        latencies.clear()
        errors.clear()
        started = time.perf_counter()
        if rate is None:
            queue = iter(picks)

            async def caller(stub: pb_grpc.RecommenderStub) -> None:
                for user in queue:
                    await one(user, time.perf_counter(), stub)

            await asyncio.gather(*(caller(stubs[i % len(stubs)]) for i in range(concurrency)))
        else:
            tasks = []
            for i, user in enumerate(picks):
                scheduled = started + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(user, scheduled, stubs[i % len(stubs)])))
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency if rate is None else None,
        "offered_rps": rate,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps": len(latencies) / elapsed,
        "errors": sum(errors.values()),
        "error_codes": errors,
        "requests": n,
    }


def run_levels(
    s: Server, users: list[str], levels: list[int], n: int, rate: float | None, depth: int, repeat: int = 1
) -> list[dict[str, Any]]:
    """Closed loop at each concurrency level, then open loop at `rate` (< 0: 70% of the best
    closed-loop throughput just measured, i.e. a load the server should carry; None: skipped)."""
    rows = []
    for i, c in enumerate(levels):
        rows.append(measure(s, users, n, c, None, depth, seed=i, repeat=repeat))
    if rate is not None:
        offered = rate if rate > 0 else round(0.7 * max(r["rps"] for r in rows), 1)
        rows.append(measure(s, users, n, 1, offered, depth, seed=len(levels), repeat=repeat))
    return rows


def measure(
    s: Server, users: list[str], n: int, concurrency: int, rate: float | None, depth: int, seed: int, repeat: int = 1
) -> dict[str, Any]:
    parts_before = [scrape([u]) for u in s.metrics_urls]
    row = asyncio.run(drive(s.targets, users, n, concurrency, rate, depth, seed, repeat))
    parts_after = [scrape([u]) for u in s.metrics_urls]
    before, after = "\n".join(parts_before), "\n".join(parts_after)
    row["process_shares"] = process_shares(parts_before, parts_after)
    row |= stage_means(stage_sums(before), stage_sums(after))
    row |= server_shares(server_buckets(before), server_buckets(after))  # the warm-up's calls included
    row |= gc_delta(before, after)
    (hits0, misses0), (hits, misses) = cache_counts(before), cache_counts(after)
    lookups = (hits - hits0) + (misses - misses0)  # the warm-up's lookups included
    row["state_cache_hit_rate"] = (hits - hits0) / lookups if lookups else 0.0
    log.info("%s", row)
    return row


# ------------------------------------------------------------------------------------ report


def label(row: dict[str, Any]) -> str:
    return f"c={row['concurrency']}" if row["concurrency"] else f"{row['offered_rps']:.0f} rps offered"


def table(title: str, rows: list[dict[str, Any]]) -> str:
    head = (
        "| load | p50 ms | p95 ms | p99 ms | req/s | errors | fetch ms | queue ms | batch wait ms "
        "| retrieve+rank ms | serialise ms | state-cache hits | server <= 50 / 100 ms | server GC ms (full: n, ms) |"
    )
    several = any(len(r.get("process_shares", [])) > 1 for r in rows)
    if several:
        head += " calls a process |"
    lines = [f"**{title}**", "", head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines[-1] += "---|" if several else ""
    for r in rows:
        shares = " / ".join(f"{x:.0%}" for x in r.get("process_shares", []))
        lines.append(
            f"| {label(r)} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.1f} | "
            f"{r['errors']} | {r['feature_fetch_ms']:.2f} | {r['queue_ms']:.2f} | {r['batch_wait_ms']:.2f} | "
            f"{r['retrieval_and_ranking_ms']:.2f} | {r['serialization_ms']:.3f} | {r['state_cache_hit_rate']:.0%} | "
            f"{r['server_within_50ms']:.1%} / {r['server_within_100ms']:.1%} | "
            f"{r['server_gc_ms']:.0f} ({r['server_full_gcs']:.0f}, {r['server_full_gc_ms']:.0f}) |"
            + (f" {shares} |" if several else "")
        )
    return "\n".join(lines)


def plot(fast: list[dict[str, Any]], naive: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rows, name, style in ((fast, "fast + cache", "-o"), (naive, "naive baseline", "--s")):
        closed = [r for r in rows if r["concurrency"]]
        xs = [r["concurrency"] for r in closed]
        for q, alpha in (("p50_ms", 1.0), ("p99_ms", 0.5)):
            ax.plot(xs, [r[q] for r in closed], style, alpha=alpha, label=f"{name} {q[:3]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("Recommend latency (ms)")
    ax.set_title("bench.serve: Recommend over gRPC + Redis")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000, help="catalogue size (default %(default)s)")
    p.add_argument("--users", type=int, default=5000, help="users with histories in Redis (default %(default)s)")
    p.add_argument("--events", type=float, default=30.0, help="mean clicks per user (default %(default)s)")
    p.add_argument("--candidates", type=int, default=500, help="retrieved and ranked per request")
    p.add_argument("--levels", default="1,4,16", help="closed-loop concurrency levels (default %(default)s)")
    p.add_argument("--requests", type=int, default=1000, help="requests per level (default %(default)s)")
    p.add_argument(
        "--rate",
        type=float,
        default=-1.0,
        help="open-loop offered rate, req/s; 0 skips it; default: 70%% of the best closed-loop throughput measured",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="requests per drawn user, in rounds (default %(default)s: every request a fresh random user)",
    )
    p.add_argument("--baseline-requests", type=int, default=300, help="requests per level for the naive baseline")
    p.add_argument("--server-args", default="", help="extra flags for the fast server, e.g. '--workers 2'")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes sharing the port for the fast server (its --processes; default %(default)s)",
    )
    p.add_argument("--work-dir", type=Path, help="keep the log, artifact and server logs here")
    p.add_argument("--plot", type=Path, help="latency plot (PNG); default: beside --json, else runs/bench_serve.png")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="model.KEY=VALUE",
        help="model config override for the served artifact (repeatable), e.g. 'model.mlp_dims=[256,128]'",
    )
    args = p.parse_args(argv)
    try:
        check_prefixes(args.set, ["model"])
    except InvalidArgument as e:
        p.error(str(e))
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levels = [int(x) for x in args.levels.split(",")]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT))

    t0 = time.monotonic()
    art, clicks, users = build_artifact(work, args.items, args.users, args.events, args.seed, args.set)
    log.info("artifact %s in %.0f s", art, time.monotonic() - t0)
    manifest = json.loads((art / "manifest.json").read_text())
    with redis_server(work) as url:
        subprocess.run(
            [sys.executable, "-m", "serving.features", "load", "--log", str(clicks), "--redis", url, "--no-progress"],
            cwd=ROOT,
            check=True,
        )
        with server(art, url, work, "fast", args.server_args.split(), args.processes) as s:
            fast = run_levels(s, users, levels, args.requests, args.rate or None, args.candidates, args.repeat)
            flags = [*(["--processes", str(args.processes)] if args.processes > 1 else []), *args.server_args.split()]
            fast_flags = " ".join(flags) or "defaults"
        with server(art, url, work, "naive", NAIVE_FLAGS) as s:
            naive = run_levels(s, users, levels, args.baseline_requests, None, args.candidates, args.repeat)
    if args.plot is None:  # never into the checkout's root, where git would see it
        args.plot = args.json.with_suffix(".png") if args.json else Path("runs/bench_serve.png")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(fast, naive, args.plot)

    c1 = next((r for r in fast if r["concurrency"] == levels[0]), fast[0])
    b1 = next((r for r in naive if r["concurrency"] == levels[0]), naive[0])
    print(
        f"\nbench.serve: {manifest['catalog_size']:,} items ({manifest['index']['kind']}), {len(users):,} users in "
        f"Redis, {args.candidates} candidates ranked per request, top 10 returned; {os.cpu_count()} cores; "
        f"each drawn user asked {args.repeat}x; untrained weights (speed only); "
        f"MLP {manifest['model_config']['mlp_dims']}\n"
    )
    print(table(f"default server: fast scorer, user-state cache, model thread (server flags: {fast_flags})", fast))
    print()
    print(table(f"naive baseline: reference score, fp32, no cache, no batching ({' '.join(NAIVE_FLAGS)})", naive))
    print(f"\np50 at c={levels[0]}: baseline / fast = {b1['p50_ms'] / c1['p50_ms']:.1f}x; plot: {args.plot}")
    if args.json:
        summary = {
            "levels": fast,
            "baseline": b1,
            "baseline_levels": naive,
            "candidates": args.candidates,
            "catalog": manifest["catalog_size"],
            "index": manifest["index"],
            "speedup_p50": b1["p50_ms"] / c1["p50_ms"],
            "server_args": args.server_args,
            "processes": args.processes,
            "repeat": args.repeat,
            "model_overrides": args.set,
            "mlp_dims": manifest["model_config"]["mlp_dims"],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)  # runs/ is not in a fresh clone
        args.json.write_text(json.dumps(summary, indent=1))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
