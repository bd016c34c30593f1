"""The one place where exceptions become gRPC statuses.

Domain code raises `recsys.errors.RecsysError` subclasses whose `code` names a `grpc.StatusCode`
member and whose message names the field and the fix; `ErrorInterceptor` aborts the call with that
status and message. Anything else is a bug: it is logged with its traceback and the client gets
INTERNAL with a request id to find that log line, and nothing of the exception itself.

Servicers therefore never catch exceptions per method.
"""

from __future__ import annotations

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

# Statuses that say the server (or a dependency) is at fault; logged as warnings, not debug.
_SERVER_SIDE = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN})


def status_of(err: RecsysError) -> grpc.StatusCode:
    """The status an error carries; a misspelt code name is a bug and falls back to INTERNAL."""
    try:
        return grpc.StatusCode[err.code]
    except KeyError:
        logger.error("%s has unknown status code name %r; using INTERNAL", type(err).__name__, err.code)
        return grpc.StatusCode.INTERNAL


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:64]
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
                level = logging.WARNING if code in _SERVER_SIDE else logging.DEBUG
                logger.log(level, "%s -> %s: %s", method, code.name, err)
                await context.abort(code, str(err))
            except Exception:
                rid = _request_id(context)
                logger.exception("%s failed (request id %s)", method, rid)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
