"""The two interceptors around `serving.errors.ErrorInterceptor`; the server chains them as

    AccessInterceptor -> ErrorInterceptor -> GuardInterceptor -> servicer method

- `AccessInterceptor` (outermost) sees every call's final status: it picks the request id (the
  client's `x-request-id`, else a new one) and echoes it in the trailing metadata, keeps the in-flight
  gauge and the per-method count and latency series, and writes one JSON access-log line per call
  (DEBUG when OK; WARNING for client-side and capacity statuses, ERROR for server faults).
- `GuardInterceptor` (innermost) admits a recsys.v1 call or raises a domain error that the error
  interceptor turns into a status: UNAUTHENTICATED / PERMISSION_DENIED (bearer tokens),
  RESOURCE_EXHAUSTED (more than max_concurrent calls at once), DEADLINE_EXCEEDED (the deadline has
  already passed). Health checks and reflection are never guarded: load balancers and the container
  health probe call them without tokens, and they reveal nothing.

Only async unary-unary handlers are wrapped (every recsys.v1 method and health Check); streaming
handlers pass through.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from recsys.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from serving.errors import REQUEST_ID, REQUEST_ID_KEY, DeadlineExceeded, request_id_of
from serving.metrics import Metrics

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("serving.access")  # one line per call; DEBUG for OK calls

GUARDED_PREFIX = "/recsys.v1."  # the API's services; health and reflection are never guarded
WRITE_METHODS = frozenset({"/recsys.v1.Recommender/RecordEvents"})  # plus every method of ADMIN_SERVICE
ADMIN_SERVICE = "/recsys.v1.Admin/"
AUTHORIZATION_KEY = "authorization"  # metadata: "Bearer <token>"

_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAVAILABLE,
    }
)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _unary_behavior(handler: grpc.RpcMethodHandler | None) -> Behavior | None:
    behavior = handler.unary_unary if handler is not None else None
    return behavior if behavior is not None and inspect.iscoroutinefunction(behavior) else None


def _rewrap(handler: grpc.RpcMethodHandler, behavior: Behavior) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Request id, metrics and the access log for every unary call. `model_version()` names the model
    served now (logged for calls whose response does not carry a version)."""

    def __init__(self, metrics: Metrics, model_version: Callable[[], str]) -> None:
        self._metrics = metrics
        self._model_version = model_version

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        behavior = _unary_behavior(handler)
        if behavior is None:
            return handler
        full_method: str = handler_call_details.method
        service, _, method = full_method.lstrip("/").rpartition("/")

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            rid = request_id_of(context)
            token = REQUEST_ID.set(rid)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            self._metrics.in_flight.inc()
            start = time.perf_counter()
            code, response = grpc.StatusCode.OK, None
            try:
                response = await behavior(request, context)
                code = _status(context)  # the error interceptor sets a failed call's status and returns None
                return response
            except grpc.aio.AbortError:
                code = _status(context)
                raise
            except asyncio.CancelledError:  # the client went away, or its deadline passed
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                seconds = time.perf_counter() - start
                self._metrics.in_flight.dec()
                self._metrics.request_done(service, method, code.name, seconds)
                self._log(full_method, code, seconds, request, response, rid, context)
                REQUEST_ID.reset(token)

        return _rewrap(handler, observed)

    def _log(
        self,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        request: Any,
        response: Any,
        rid: str,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        ok = code == grpc.StatusCode.OK
        level = logging.DEBUG if ok else logging.ERROR if code in _SERVER_FAULTS else logging.WARNING
        if not access_logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "method": method,
            "status": code.name,
            "latency_ms": round(seconds * 1000, 3),
            "user_id": getattr(request, "user_id", None) or None,
            "request_id": rid,
            "model_version": getattr(response, "model_version", None) or self._model_version(),
        }
        if not ok:
            fields["details"] = _details(context)
        access_logger.log(level, json.dumps(fields, separators=(",", ":")), extra={"fields": fields})


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Tokens, the concurrency bound and expired deadlines, for recsys.v1 calls only.

    Token rules, when any token is configured: RecordEvents and every Admin method need a write token
    (UNAUTHENTICATED without a valid token, PERMISSION_DENIED for a read token); Recommend, Rank and
    GetModelInfo are open unless `require_read_token`, and then take a read or a write token.
    The in-flight count is a plain int: every interceptor runs on the one event-loop thread.
    """

    def __init__(
        self,
        max_concurrent: int,
        write_tokens: Sequence[str] = (),
        read_tokens: Sequence[str] = (),
        require_read_token: bool = False,
    ) -> None:
        self.max_concurrent = max_concurrent
        self._write = [t.encode() for t in write_tokens]
        self._read = [t.encode() for t in read_tokens]
        self._auth = bool(self._write or self._read)
        self._require_read = require_read_token
        self.active = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        behavior = _unary_behavior(handler)
        if behavior is None or not method.startswith(GUARDED_PREFIX):
            return handler
        writes = method in WRITE_METHODS or method.startswith(ADMIN_SERVICE)

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self._auth and (writes or self._require_read):
                self._authorize(method, writes, context)
            if self.active >= self.max_concurrent:
                raise ResourceExhausted(
                    f"server busy: {self.active} requests in flight, the limit is max_concurrent="
                    f"{self.max_concurrent}; fix: retry with backoff, or raise --max-concurrent / add replicas"
                )
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"{method}: the deadline passed before the call was started")
            self.active += 1
            try:
                return await behavior(request, context)
            finally:
                self.active -= 1

        return _rewrap(handler, guarded)

    def _authorize(self, method: str, writes: bool, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        token = _bearer(context)
        fix = f"send metadata '{AUTHORIZATION_KEY}: Bearer <token>' with a {'write' if writes else 'read'} token"
        if token is None:
            raise Unauthenticated(f"{method}: this server requires a token and the call has none; fix: {fix}")
        is_write = _matches(token, self._write)
        if not is_write and not _matches(token, self._read):
            raise Unauthenticated(f"{method}: the token is not valid; fix: {fix}")
        if writes and not is_write:
            raise PermissionDenied(f"{method}: a read-only token cannot call this method; fix: {fix}")


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip().encode() if scheme.lower() == "bearer" and token.strip() else b""
    return None


def _matches(token: bytes, allowed: Sequence[bytes]) -> bool:
    """Constant-time per candidate, and every candidate is compared."""
    found = False
    for candidate in allowed:
        found |= hmac.compare_digest(token, candidate)
    return found


def _status(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    for member in grpc.StatusCode:  # some grpc versions report the raw integer
        if member.value[0] == code:
            return member
    return grpc.StatusCode.UNKNOWN


def _details(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    details = context.details()
    return details.decode(errors="replace") if isinstance(details, bytes) else str(details or "")
