"""The gRPC server: a thin servicer over `RecommendationService`, and the `build_server` factory.

The servicer only translates: proto in -> one service call on the worker pool -> proto out. It never
catches exceptions; `serving.errors.ErrorInterceptor` turns domain errors into statuses.

Threading: the asyncio loop only does gRPC I/O. Model and store calls block (torch, redis-py), so they
run on a dedicated `ThreadPoolExecutor` of `config.workers` threads, each torch call using
`config.torch_threads` intra-op threads; workers * torch_threads should not exceed the cores given to
the container. Requests beyond `workers` wait in the executor's queue, not on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio
import torch
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto.recsys.v1 import recommender_pb2 as pb
from proto.recsys.v1 import recommender_pb2_grpc as pb_grpc
from recsys.errors import InvalidArgument, Unavailable
from recsys.features import Event, FeatureStore
from recsys.recommender import Recommender
from recsys.store import mask_url, open_store
from serving.errors import ErrorInterceptor
from serving.service import RecommendationService

logger = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "recsys.v1.Recommender"
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    artifact: str  # a model version dir, or an artifacts root holding a LATEST pointer (Recommender.load)
    features: str = "memory://"  # feature store URL: memory:// (seeded from the artifact) or redis://H:P/DB
    host: str = "127.0.0.1"  # bind address; "0.0.0.0" inside a container, loopback by default for safety
    port: int = 50051  # 0 picks a free port (tests read the bound one from App.port)
    max_history: int = 200  # events kept per user by the store; the model reads only its newest few
    workers: int = 4  # threads running model/store calls = requests computed at once; the rest queue
    max_message_bytes: int = 4 * 1024 * 1024  # both directions; a maximal Rank (10k ids) fits in ~2.6 MB
    grace_s: float = 5.0  # on SIGTERM, in-flight requests get this long before they are cancelled
    torch_threads: int = 1  # intra-op threads per torch call (process-wide); parallelism comes from workers

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("artifact", bool(self.artifact), "pass --artifact DIR"),
            ("port", 0 <= self.port <= 65535, "use 0..65535 (0 = any free port)"),
            ("max_history", self.max_history >= 1, "use >= 1"),
            ("workers", self.workers >= 1, "use >= 1"),
            ("max_message_bytes", self.max_message_bytes >= 1024, "use >= 1024"),
            ("grace_s", self.grace_s >= 0, "use >= 0 seconds"),
            ("torch_threads", self.torch_threads >= 1, "use >= 1"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise InvalidArgument(f"server config: {name}={getattr(self, name)!r} is invalid; fix: {fix}")


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """recsys.v1.Recommender: proto -> `RecommendationService` call (on the worker pool) -> proto."""

    def __init__(self, service: RecommendationService, executor: ThreadPoolExecutor) -> None:
        self._service = service
        self._executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def Recommend(self, request: pb.RecommendRequest, context: Any) -> pb.RecommendResponse:
        rec = await self._run(
            self._service.recommend,
            request.user_id,
            request.k,
            exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
            now=request.request_time_unix if request.HasField("request_time_unix") else None,
        )
        return pb.RecommendResponse(
            items=[pb.ScoredItem(item_id=it.item_id, score=it.score) for it in rec.items],
            model_version=rec.model_version,
            personalised=rec.personalised,
            reason=rec.reason,
        )

    async def Rank(self, request: pb.RankRequest, context: Any) -> pb.RankResponse:
        ranking = await self._run(
            self._service.rank,
            request.user_id,
            list(request.item_ids),
            now=request.request_time_unix if request.HasField("request_time_unix") else None,
        )
        return pb.RankResponse(scores=ranking.scores, model_version=ranking.model_version)

    async def RecordEvents(self, request: pb.RecordEventsRequest, context: Any) -> pb.RecordEventsResponse:
        events = [
            Event(item_id=e.item_id, timestamp=e.timestamp_unix, event=e.event, event_id=e.event_id)
            for e in request.events
        ]
        state = await self._run(self._service.record_events, request.user_id, events)
        return pb.RecordEventsResponse(accepted=len(events), history_length=len(state.history))

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Any) -> pb.ModelInfo:
        info = self._service.model_info()  # attribute reads only; no need for the pool
        return pb.ModelInfo(
            model_version=info.version,
            created_at=info.created_at,
            catalog_size=info.catalog_size,
            metrics=dict(info.metrics),
        )


@dataclass
class App:
    """A built, not yet started server and what it serves. `async with app:` starts and stops it."""

    config: ServerConfig
    server: grpc.aio.Server
    port: int  # the bound port (differs from config.port when that is 0)
    service: RecommendationService
    health: grpc_health.aio.HealthServicer
    executor: ThreadPoolExecutor

    @property
    def target(self) -> str:
        """What a client on this machine dials, e.g. "127.0.0.1:50051" (loopback for a wildcard host)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.config.host, self.config.host)
        return _address(host, self.port)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: report NOT_SERVING (load balancers drain), refuse new calls, let in-flight ones
        finish for `grace` seconds (default `config.grace_s`), then release workers and the store."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_s if grace is None else grace)
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        self.service.store.close()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def build_server(config: ServerConfig) -> App:
    """Load the model, open (and for memory:// seed) the store, and assemble an unstarted server with
    the Recommender service, health (SERVING for "" and recsys.v1.Recommender), reflection and the
    error interceptor. Raises `ArtifactError` for a bad artifact, `InvalidArgument` for a bad store URL,
    `Unavailable` when the store or the port cannot be had."""
    # Process-wide and deliberate: parallelism comes from `workers` threads, not from intra-op threads
    # that would oversubscribe the cores once several requests run at once.
    torch.set_num_threads(config.torch_threads)

    # The store first: opening it only parses the URL (no I/O), so a bad URL fails before the slow load.
    store = open_store(config.features, max_history=config.max_history)
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="recsys-worker")
    try:
        recommender = await asyncio.to_thread(Recommender.load, config.artifact)
        if urlsplit(config.features).scheme == "memory":
            users = await asyncio.to_thread(_seed, store, recommender)
            logger.info("seeded memory:// store with %d users from the artifact's training log", users)
        service = RecommendationService(recommender, store)

        server = grpc.aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
            ],
        )
        pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(service, executor), server)

        health = grpc_health.aio.HealthServicer()
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)

        address = _address(config.host, config.port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as err:  # grpc reports a failed bind as RuntimeError
            raise Unavailable(f"cannot listen on {address} ({err}); fix: pick a free --port or --host") from None
        if port == 0:
            raise Unavailable(f"cannot listen on {address}; fix: pick a free --port or --host")
    except BaseException:
        executor.shutdown(wait=False)
        store.close()
        raise
    return App(config=config, server=server, port=port, service=service, health=health, executor=executor)


async def serve(config: ServerConfig) -> None:
    """Build, start, and run until SIGTERM or SIGINT; then stop gracefully (`config.grace_s`)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Installed before the (slow) model load, so a SIGTERM during start-up also ends cleanly.
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        app = await build_server(config)
        if stop.is_set():
            await app.stop(0)
            return
        await app.start()
        model = app.service.recommender
        logger.info(
            "serving %s model %s (%d items) on %s; features %s; %d workers x %d torch threads",
            SERVICE_NAME,
            model.version,
            model.n_items,
            app.target,
            mask_url(config.features),
            config.workers,
            config.torch_threads,
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
