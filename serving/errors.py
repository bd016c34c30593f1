"""The one place where exceptions become gRPC statuses.

Domain code raises `recsys.errors.RecsysError` subclasses whose `code` names a `grpc.StatusCode`
member and whose message names the field and the fix; `ErrorInterceptor` ends the call with that
status and message. Anything else is a bug: it is logged with its traceback and the client gets
INTERNAL with a request id to find that log line, and nothing of the exception itself.

Servicers therefore never catch exceptions per method.

The request id is the one `serving.interceptors.AccessInterceptor` chose for the call (`REQUEST_ID`,
a context variable), so the INTERNAL details, the traceback's log line and the request's access-log
line all carry the same id. Domain errors are logged here at DEBUG only: the access log line (WARNING
or ERROR) already reports every failed call with its status and details.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from recsys.errors import RecsysError

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"  # metadata key a client may set; echoed in INTERNAL details and logs
MAX_REQUEST_ID_LENGTH = 64
# The current call's request id, set by the access interceptor (and copied into worker threads).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("recsys_request_id", default=None)


class DeadlineExceeded(RecsysError):
    """The call's deadline passed before the server computed it (on arrival, or while queued)."""

    code = "DEADLINE_EXCEEDED"


def status_of(err: RecsysError) -> grpc.StatusCode:
    """The status an error carries; a misspelt code name is a bug and falls back to INTERNAL."""
    try:
        return grpc.StatusCode[err.code]
    except KeyError:
        logger.error("%s has unknown status code name %r; using INTERNAL", type(err).__name__, err.code)
        return grpc.StatusCode.INTERNAL


def request_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The id of this call: the one already chosen for it, else the client's `x-request-id`, else new."""
    chosen = REQUEST_ID.get()
    if chosen:
        return chosen
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:MAX_REQUEST_ID_LENGTH]
    return uuid.uuid4().hex[:16]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps `RecsysError` to its status and everything else to a logged, opaque INTERNAL.

    Only async unary-unary handlers are wrapped (every recsys.v1 method is one). Streaming handlers
    (health Watch, reflection) and sync handlers pass through untouched. Aborts raised by the wrapped
    handler itself (`context.abort`, e.g. health Check's NOT_FOUND) are re-raised unchanged.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        behavior = handler.unary_unary if handler is not None else None
        if behavior is None or not inspect.iscoroutinefunction(behavior):
            return handler
        method: str = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise  # the handler already chose its status
            except RecsysError as err:
                code = status_of(err)
                logger.debug("%s -> %s: %s", method, code.name, err)
                return _fail(context, code, str(err))
            except Exception:
                rid = request_id_of(context)
                logger.exception("%s failed (request id %s)", method, rid)
                return _fail(context, grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _fail(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, details: str) -> None:
    """Set the call's status and return no response; gRPC sends the status once the handler returns.

    Not `context.abort`, which sends the status at once: the client could then see the error before
    the interceptors outside this one (metrics, access log) had counted it, and a scrape right after a
    failed call would miss it.
    """
    context.set_code(code)
    context.set_details(details)
