"""The gRPC server: thin servicers over `RecommendationService` and `ModelReloader`, and the
`build_server` factory.

The servicers only translate: proto in -> one service call on the worker pool -> proto out. They never
catch exceptions; `serving.errors.ErrorInterceptor` turns domain errors into statuses, with
`serving.interceptors` around it (request ids, metrics, access log; tokens, concurrency bound).

Threading: the asyncio loop only does gRPC I/O. Store calls block (redis-py), so they run on a
dedicated `ThreadPoolExecutor` of `config.workers` threads; model calls run on one model thread
(`serving.batching.ModelThread`) with `torch_threads` intra-op threads (default: the process's cores),
which batches concurrent Recommend calls. With `batch_max=0` the workers compute themselves, each
with `torch_threads` (default 1), and workers * torch_threads should not exceed the cores given to the
container. (One process computes through one interpreter lock: `serving.processes` runs several on one
port.) Requests beyond `workers` wait in the executor's queue, not on the loop, and at most
`config.max_concurrent` are admitted at once. A call whose deadline passes while it waits is never
computed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import grpc
import grpc.aio
import torch
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto.recsys.v1 import recommender_pb2 as pb
from proto.recsys.v1 import recommender_pb2_grpc as pb_grpc
from recsys.errors import FailedPrecondition, InvalidArgument, Unavailable
from recsys.fast import keep_freed_memory
from recsys.features import Event, FeatureStore
from recsys.index import set_search_threads
from recsys.recommender import Recommender
from recsys.store import open_store
from serving.batching import ModelThread
from serving.cache import UserStateCache
from serving.config import ServerConfig
from serving.errors import DeadlineExceeded, ErrorInterceptor
from serving.interceptors import AccessInterceptor, GuardInterceptor
from serving.metrics import Metrics, MetricsHTTPServer
from serving.reload import ModelOptions, ModelReloader, load_and_warm
from serving.service import RecommendationService

__all__ = ["App", "ServerConfig", "build_server", "serve"]

logger = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"
ADMIN_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Admin"].full_name  # "recsys.v1.Admin"
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

T = TypeVar("T")


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """recsys.v1.Recommender: proto -> `RecommendationService` call (on the worker pool) -> proto."""

    def __init__(self, service: RecommendationService, executor: ThreadPoolExecutor, metrics: Metrics) -> None:
        self._service = service
        self._executor = executor
        self._metrics = metrics

    async def _run(self, method: str, context: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the worker pool, in this call's context (request id for logs).
        Times the wait for a worker; if the call's deadline passed meanwhile, raises instead of computing."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        queued = time.perf_counter()

        def call() -> T:
            self._metrics.observe_stage(method, "queue", time.perf_counter() - queued)
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"{method}: the deadline passed while the call waited for a worker; "
                    "fix: allow a longer deadline, or add capacity (--workers, replicas)"
                )
            return fn(*args, **kwargs)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(contextvars.copy_context().run, call))

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        rec = await self._run(
            "Recommend",
            context,
            self._service.recommend,
            request.user_id,
            request.k,
            exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
            now=request.request_time_unix if request.HasField("request_time_unix") else None,
            depth=request.retrieval_depth or None,
            allow=list(request.allow_item_ids) or None,
            deny=list(request.deny_item_ids),
        )
        with self._metrics.stage("Recommend", "serialization"):
            return pb.RecommendResponse(
                items=[pb.ScoredItem(item_id=it.item_id, score=it.score) for it in rec.items],
                model_version=rec.model_version,
                personalised=rec.personalised,
                reason=rec.reason,
            )

    async def Rank(self, request: pb.RankRequest, context: Any) -> pb.RankResponse:
        ranking = await self._run(
            "Rank",
            context,
            self._service.rank,
            request.user_id,
            list(request.item_ids),
            now=request.request_time_unix if request.HasField("request_time_unix") else None,
        )
        with self._metrics.stage("Rank", "serialization"):
            return pb.RankResponse(scores=ranking.scores, model_version=ranking.model_version, reason=ranking.reason)

    async def RecordEvents(self, request: pb.RecordEventsRequest, context: Any) -> pb.RecordEventsResponse:
        events = [
            Event(item_id=e.item_id, timestamp=e.timestamp_unix, event=e.event, event_id=e.event_id)
            for e in request.events
        ]
        state = await self._run("RecordEvents", context, self._service.record_events, request.user_id, events)
        return pb.RecordEventsResponse(accepted=len(events), history_length=len(state.history))

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Any) -> pb.ModelInfo:
        info = self._service.model_info()  # attribute reads only; no need for the pool
        return pb.ModelInfo(
            model_version=info.version,
            created_at=info.created_at,
            catalog_size=info.catalog_size,
            metrics=dict(info.metrics),
            default_retrieval_depth=info.default_retrieval_depth,
            retrieval_blend=info.retrieval_blend,
        )


class AdminServicer(pb_grpc.AdminServicer):
    """recsys.v1.Admin: proto -> `ModelReloader` -> proto."""

    def __init__(self, reloader: ModelReloader, processes: int = 1) -> None:
        self._reloader = reloader
        self._processes = processes

    async def Reload(self, request: pb.ReloadRequest, context: Any) -> pb.ReloadResponse:
        if request.HasField("version") and self._processes > 1:
            raise FailedPrecondition(
                f"version: reloading {request.version!r} would reach one of this server's {self._processes} "
                "processes; fix: promote it (python -m training registry promote VERSION), which every process "
                "follows, or call Reload without a version to re-read LATEST"
            )
        version, changed = await self._reloader.reload(request.version if request.HasField("version") else None)
        return pb.ReloadResponse(model_version=version, changed=changed)


@dataclass
class App:
    """A built, not yet started server and what it serves. `async with app:` starts and stops it.

    `start()` also opens the metrics endpoint (unless `config.metrics_port` is 0) and, for an artifacts
    root, starts the LATEST watcher; `stop()` closes both."""

    config: ServerConfig
    server: grpc.aio.Server
    port: int  # the bound port (differs from config.port when that is 0)
    service: RecommendationService
    health: grpc_health.aio.HealthServicer
    executor: ThreadPoolExecutor
    metrics: Metrics
    reloader: ModelReloader
    guard: GuardInterceptor
    model_thread: ModelThread | None
    _metrics_http: MetricsHTTPServer | None = field(default=None, init=False, repr=False)
    _watcher: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @property
    def target(self) -> str:
        """What a client on this machine dials, e.g. "127.0.0.1:50051" (loopback for a wildcard host)."""
        return _address(dial_host(self.config.host), self.port)

    @property
    def metrics_port(self) -> int:
        """The bound metrics port; 0 when metrics are disabled or could not be bound."""
        return self._metrics_http.port if self._metrics_http is not None else 0

    async def start(self) -> None:
        await self.server.start()
        if self.config.metrics_port:
            try:
                self._metrics_http = MetricsHTTPServer(self.metrics, self.config.host, self.config.metrics_port)
            except OSError as err:
                # Serving matters more than being scraped: keep answering; the scrape target shows down.
                logger.error(
                    "metrics: cannot listen on %s (%s); serving without metrics; fix: pick a free --metrics-port",
                    _address(self.config.host, self.config.metrics_port),
                    err,
                )
        if self.reloader.root is not None and self.config.reload_interval > 0:
            self._watcher = asyncio.create_task(self.reloader.watch(self.config.reload_interval))

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: report NOT_SERVING (load balancers drain), refuse new calls, let in-flight ones
        finish for `grace` seconds (default `config.grace_s`), then release workers and the store."""
        await self.health.enter_graceful_shutdown()
        if self._watcher is not None:
            self._watcher.cancel()
        await self.server.stop(self.config.grace_s if grace is None else grace)
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        if self.model_thread is not None:
            await asyncio.to_thread(self.model_thread.close)
        self.service.store.close()
        if self._metrics_http is not None:
            await asyncio.to_thread(self._metrics_http.close)
            self._metrics_http = None

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def build_server(config: ServerConfig, slot: tuple[int, int] = (0, 1)) -> App:
    """Load and warm up the model, open (and for memory:// seed) the store, and assemble an unstarted
    server with the Recommender and Admin services, health (SERVING for "" and each service),
    reflection and the interceptors. Raises `ArtifactError` for a bad artifact, `InvalidArgument` for a
    bad store URL or unreadable TLS files, `Unavailable` when the store or the port cannot be had.
    `slot` (i, N): this is process i of N sharing the port (`serving.processes`)."""
    # Process-wide and deliberate: with the model thread, one computation at a time uses every core;
    # without it, parallelism comes from the workers and intra-op threads would oversubscribe the cores.
    threads = torch_threads(config)
    torch.set_num_threads(threads)
    # FAISS searches a handful of queries per call, and its wheel brings its own OpenMP runtime: a
    # second pool of spinning threads fighting torch's for the same cores (measured: Recommend at c=1
    # went from 23 to 129 ms of model time with both at 2 threads). One FAISS thread: it never forks.
    set_search_threads(1)
    keep_freed_memory()  # no page faults for each request's activations (recsys.fast)

    # The store first: opening it only parses the URL (no I/O), so a bad URL fails before the slow load.
    store = open_store(config.features, max_history=config.max_history)
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="recsys-worker")
    try:
        credentials = _server_credentials(config)
        options: ModelOptions = {
            "scorer": "reference" if config.scorer == "reference" else "fast",
            "precision": cast(Literal["fp32", "bf16", "int8"], config.precision),
            "state_cache": config.state_cache,
            "retrieval_blend": None if config.retrieval_blend == -1 else config.retrieval_blend,
        }
        recommender = await asyncio.to_thread(load_and_warm, Path(config.artifact), options)
        if urlsplit(config.features).scheme == "memory":
            users = await asyncio.to_thread(_seed, store, recommender)
            logger.info("seeded memory:// store with %d users from the artifact's training log", users)
        metrics = Metrics()
        cache = UserStateCache(config.cache_size, config.cache_ttl)
        model_thread = (
            ModelThread(metrics, config.batch_max, config.batch_wait_ms / 1e3, threads, config.parallel_min_mflop * 1e6)
            if config.batch_max
            else None
        )
        service = RecommendationService(recommender, store, cache=cache, metrics=metrics, model_thread=model_thread)
        reloader = ModelReloader(service, config.artifact, executor, metrics, options)
        guard = GuardInterceptor(
            config.max_concurrent, config.write_tokens, config.read_tokens, config.require_read_token
        )

        server = grpc.aio.server(
            interceptors=[AccessInterceptor(metrics, lambda: service.recommender.version), ErrorInterceptor(), guard],
            options=[
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                # a second server on a busy port must fail, not share it; the supervisor's children share it
                ("grpc.so_reuseport", int(slot[1] > 1)),
            ],
        )
        pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(service, executor, metrics), server)
        pb_grpc.add_AdminServicer_to_server(AdminServicer(reloader, slot[1]), server)

        health = grpc_health.aio.HealthServicer()
        for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
        )

        port = _listen(server, _address(config.host, config.port), credentials)
        if slot[1] > 1:  # process i of N also listens on a port of its own, port + 1 + i (serving.processes)
            _listen(server, _address(config.host, config.port + 1 + slot[0]), credentials)
    except BaseException:
        executor.shutdown(wait=False)
        store.close()
        raise
    return App(
        model_thread=model_thread,
        config=config,
        server=server,
        port=port,
        service=service,
        health=health,
        executor=executor,
        metrics=metrics,
        reloader=reloader,
        guard=guard,
    )


async def serve(config: ServerConfig, slot: tuple[int, int] = (0, 1), ready_fd: int | None = None) -> None:
    """Build, start, and run until SIGTERM or SIGINT; then stop gracefully (`config.grace_s`). `slot`:
    process i of N under `serving.processes`, which learns through `ready_fd` (a pipe's write end) that
    this process has started: one byte is written there as soon as the server listens."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Installed before the (slow) model load, so a SIGTERM during start-up also ends cleanly.
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        logger.info("effective config: %s", json.dumps(config.masked(), sort_keys=True))
        if config.auth_enabled and not config.tls_cert and dial_host(config.host) not in _LOOPBACK:
            logger.warning("tokens are configured without TLS: they cross the network in clear text; fix: --tls-cert")
        if config.read_tokens and not config.write_tokens:
            logger.warning("read tokens but no write tokens: RecordEvents and Admin calls will all be refused")
        app = await build_server(config, slot)
        if stop.is_set():
            await app.stop(0)
            return
        await app.start()
        if ready_fd is not None:  # no await since start(): before the loop handles the first calls
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        model = app.service.recommender
        logger.info(
            "serving %s model %s (%d items) on %s (%s%s); metrics %s; %d workers; %s, %d torch threads",
            SERVICE_NAME,
            model.version,
            model.n_items,
            app.target,
            "TLS" if config.tls_cert else "plaintext",
            f", process {slot[0]} of {slot[1]}" if slot[1] > 1 else "",
            f"http://{_address(dial_host(config.host), app.metrics_port)}/metrics" if app.metrics_port else "off",
            config.workers,
            f"one model thread, batches of up to {config.batch_max}" if config.batch_max else "no batching",
            torch_threads(config),
        )
        try:
            await stop.wait()
            logger.info("signal received; draining in-flight requests for up to %.1fs", config.grace_s)
        finally:
            await app.stop()
        logger.info("stopped")
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def torch_threads(config: ServerConfig) -> int:
    """`config.torch_threads`, or for 0 the cores this process may use (one model thread) or 1 (workers
    compute)."""
    if config.torch_threads:
        return config.torch_threads
    return len(os.sched_getaffinity(0)) if config.batch_max else 1


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind `address`; the bound port (for port 0, the one picked)."""
    try:
        port = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError as err:  # grpc reports a failed bind as RuntimeError
        raise Unavailable(f"cannot listen on {address} ({err}); fix: pick a free --port or --host") from None
    if port == 0:
        raise Unavailable(f"cannot listen on {address}; fix: pick a free --port or --host")
    return int(port)


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    pems = []
    for name in ("tls_key", "tls_cert"):
        path = getattr(config, name)
        try:
            pems.append(Path(path).read_bytes())
        except OSError as err:
            raise InvalidArgument(
                f"{name}: cannot read {path} ({err.strerror}); fix: pass a readable PEM file"
            ) from None
    return grpc.ssl_server_credentials([(pems[0], pems[1])])


def dial_host(host: str) -> str:
    """The address a client on this machine dials for a bind address (loopback for a wildcard)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seed(store: FeatureStore, recommender: Recommender) -> int:
    """Load the artifact's training log into a fresh in-memory store, one bulk write."""
    histories: dict[str, list[Event]] = {}
    profiles: dict[str, Mapping[str, str]] = {}
    for user_id, history, profile in recommender.seed():
        histories[user_id] = history
        if profile:
            profiles[user_id] = profile
    return store.put_users(histories, profiles) if histories else 0
