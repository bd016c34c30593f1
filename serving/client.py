"""A small synchronous client for recsys.v1.Recommender, and a CLI over it.

    with RecommenderClient("localhost:50051") as client:
        reply = client.recommend("u1", k=10)

    python -m serving.client [--target localhost:50051] recommend --user U [--k 10] [--include-seen]
    python -m serving.client rank --user U --items a,b,c
    python -m serving.client record --user U --item I [--event click] [--timestamp T]
    python -m serving.client info
    python -m serving.client reload [--version V]         # Admin.Reload (needs a write token if enabled)
    python -m serving.client --tls-ca ca.pem --token T ... # TLS with that CA, and a bearer token

Methods return the response protos and raise `grpc.RpcError`; the CLI prints such an error as one line
`error: <STATUS>: <details>` and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto.recsys.v1 import recommender_pb2 as pb
from proto.recsys.v1 import recommender_pb2_grpc as pb_grpc
from recsys.features import Event

DEFAULT_TARGET = "localhost:50051"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # matches the server default

EventLike = Event | tuple[str, float, str] | tuple[str, float, str, str]  # (item, ts, event[, event_id])


class RecommenderClient:
    """One channel to a server; every call has a deadline of `timeout` seconds.

    `tls_ca`: a PEM file of the CA that signed the server's certificate (TLS; `tls=True` alone uses the
    system's roots). `token`: sent as `authorization: Bearer <token>` on every call.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float = 5.0,
        *,
        tls_ca: str | Path | None = None,
        tls: bool = False,
        token: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls_ca is not None or tls:
            roots = Path(tls_ca).read_bytes() if tls_ca is not None else None
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        request_time: float | None = None,
        *,
        retrieval_depth: int = 0,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
    ) -> pb.RecommendResponse:
        request = pb.RecommendRequest(
            user_id=user_id,
            k=k,
            exclude_seen=exclude_seen,
            retrieval_depth=retrieval_depth,
            allow_item_ids=list(allow),
            deny_item_ids=list(deny),
        )
        if request_time is not None:
            request.request_time_unix = request_time
        return self._stub.Recommend(request, timeout=self.timeout, metadata=self._metadata)

    def rank(self, user_id: str, item_ids: Sequence[str], request_time: float | None = None) -> pb.RankResponse:
        request = pb.RankRequest(user_id=user_id, item_ids=list(item_ids))
        if request_time is not None:
            request.request_time_unix = request_time
        return self._stub.Rank(request, timeout=self.timeout, metadata=self._metadata)

    def record(self, user_id: str, events: Iterable[EventLike]) -> pb.RecordEventsResponse:
        """Append events: `Event`s or tuples (item_id, timestamp, event[, event_id]); timestamp 0 = now."""
        protos = [_event_proto(e) for e in events]
        request = pb.RecordEventsRequest(user_id=user_id, events=protos)
        return self._stub.RecordEvents(request, timeout=self.timeout, metadata=self._metadata)

    def info(self) -> pb.ModelInfo:
        return self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self._metadata)

    def reload(self, version: str | None = None) -> pb.ReloadResponse:
        """Admin.Reload: serve `version` (None = what the server's artifacts root's LATEST names)."""
        request = pb.ReloadRequest() if version is None else pb.ReloadRequest(version=version)
        return self._admin.Reload(request, timeout=self.timeout, metadata=self._metadata)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status name for `service` ("" = the server), e.g. "SERVING"."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _event_proto(e: EventLike) -> pb.Event:
    if isinstance(e, Event):
        return pb.Event(item_id=e.item_id, timestamp_unix=e.timestamp, event=e.event, event_id=e.event_id)
    item_id, timestamp, event, *rest = e
    return pb.Event(item_id=item_id, timestamp_unix=timestamp, event=event, event_id=rest[0] if rest else "")


# ---- CLI ------------------------------------------------------------------------------------------


def format_items(rows: Sequence[tuple[str, float]]) -> str:
    """An aligned table: rank, item_id, score (rows already best first)."""
    width = max([len("item_id"), *(len(item) for item, _ in rows)])
    lines = [f"{'rank':>4}  {'item_id':<{width}}  {'score':>10}"]
    lines += [f"{i:>4}  {item:<{width}}  {score:>10.4f}" for i, (item, score) in enumerate(rows, 1)]
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.client", description="Call a recsys.v1.Recommender.")
    p.add_argument("--target", default=DEFAULT_TARGET, help="host:port of the server")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline per call, seconds")
    p.add_argument("--tls-ca", help="PEM file of the CA that signed the server's certificate (enables TLS)")
    p.add_argument("--token", help="bearer token sent with every call")
    sub = p.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("recommend", help="top-k items for a user")
    rec.add_argument("--user", required=True)
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--include-seen", action="store_true", help="allow items already in the history")
    rec.add_argument("--depth", type=int, default=0, help="candidates to retrieve and rank (0 = server default)")
    rec.add_argument("--allow", default="", help="comma-separated item ids: recommend only among these")
    rec.add_argument("--deny", default="", help="comma-separated item ids: never recommend these")

    rank = sub.add_parser("rank", help="score given items for a user (printed best first)")
    rank.add_argument("--user", required=True)
    rank.add_argument("--items", required=True, help="comma-separated item ids")

    record = sub.add_parser("record", help="append one event to a user's history")
    record.add_argument("--user", required=True)
    record.add_argument("--item", required=True)
    record.add_argument("--event", default="click")
    record.add_argument("--timestamp", type=float, default=0.0, help="epoch seconds; 0 = server now")

    sub.add_parser("info", help="the served model")

    reload = sub.add_parser("reload", help="Admin.Reload: load, warm up and swap in a model version")
    reload.add_argument("--version", help="version dir under the server's artifacts root (default: LATEST)")
    return p.parse_args(argv)


def _run(client: RecommenderClient, args: argparse.Namespace) -> str:
    if args.command == "recommend":
        reply = client.recommend(
            args.user,
            k=args.k,
            exclude_seen=not args.include_seen,
            retrieval_depth=args.depth,
            allow=_ids(args.allow),
            deny=_ids(args.deny),
        )
        kind = "personalised" if reply.personalised else "not personalised"
        table = format_items([(it.item_id, it.score) for it in reply.items])
        return f"{table}\nmodel {reply.model_version}; {kind} ({reply.reason})"
    if args.command == "rank":
        items = _ids(args.items)
        ranked = client.rank(args.user, items)
        rows = sorted(zip(items, ranked.scores, strict=True), key=lambda r: r[1], reverse=True)
        return f"{format_items(rows)}\nmodel {ranked.model_version}" + (f" ({ranked.reason})" if ranked.reason else "")
    if args.command == "record":
        done = client.record(args.user, [(args.item, args.timestamp, args.event)])
        return f"accepted {done.accepted} event(s); {args.user} now has {done.history_length} in history"
    if args.command == "reload":
        reloaded = client.reload(args.version)
        return f"serving {reloaded.model_version} ({'changed' if reloaded.changed else 'unchanged'})"
    info = client.info()
    lines = [
        f"model_version  {info.model_version}",
        f"created_at     {info.created_at}",
        f"catalog_size   {info.catalog_size}",
        f"retrieval_depth {info.default_retrieval_depth}",
        f"retrieval_blend {info.retrieval_blend:g}",
    ]
    lines += [f"{name:<14} {value:.4f}" for name, value in sorted(info.metrics.items())]
    return "\n".join(lines)


def _ids(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        with RecommenderClient(args.target, timeout=args.timeout, tls_ca=args.tls_ca, token=args.token) as client:
            print(_run(client, args))
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
