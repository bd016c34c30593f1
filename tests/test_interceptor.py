"""`serving.errors.ErrorInterceptor` on a real grpc.aio server bound to a loopback port.

The server carries the interceptor, the standard health service and a tiny raw-bytes test service
whose handlers raise domain errors or a plain bug. Checked: each `RecsysError` arrives with its own
status and message; a bug arrives as INTERNAL with a request id and none of its internals, and is
logged with its traceback; aborts chosen by a handler itself (health's NOT_FOUND) pass through; and
the server keeps answering afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from recsys.errors import ArtifactError, InvalidArgument, NotFound, RecsysError, Unavailable
from serving.errors import REQUEST_ID_KEY, ErrorInterceptor

SERVICE = "test.Errors"
SECRET = "db password is hunter2"  # must never reach a client


def _raiser(exc: BaseException) -> Callable[[bytes, Any], Awaitable[bytes]]:
    async def handler(request: bytes, context: Any) -> bytes:
        raise exc

    return handler


async def _echo(request: bytes, context: Any) -> bytes:
    return request


class _BadCode(RecsysError):
    code = "NO_SUCH_STATUS"  # a typo in a domain error must still give a status, not crash the call


DOMAIN_ERRORS: dict[str, tuple[RecsysError, grpc.StatusCode]] = {
    "NotFound": (NotFound("item_ids: unknown ('a', 'b'); fix: rank known items"), grpc.StatusCode.NOT_FOUND),
    "Invalid": (InvalidArgument("user_id: empty; fix: send the user's id"), grpc.StatusCode.INVALID_ARGUMENT),
    "Unavailable": (Unavailable("store unreachable; fix: retry"), grpc.StatusCode.UNAVAILABLE),
    "Artifact": (ArtifactError("checksum mismatch; fix: re-export"), grpc.StatusCode.FAILED_PRECONDITION),
    "BadCode": (_BadCode("odd"), grpc.StatusCode.INTERNAL),
}
HANDLERS: dict[str, Callable[[bytes, Any], Awaitable[bytes]]] = {
    "Echo": _echo,
    "Bug": _raiser(RuntimeError(SECRET)),
    **{name: _raiser(err) for name, (err, _) in DOMAIN_ERRORS.items()},
}


async def _start() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in HANDLERS.items()}
            )
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _call(
    target: str, method: str, payload: bytes = b"x", metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, str, bytes | None]:
    async with grpc.aio.insecure_channel(target) as channel:
        rpc = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            reply = await rpc(payload, timeout=5, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or "", None
        return grpc.StatusCode.OK, "", reply


def _run_against_server(scenario: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        server, target = await _start()
        try:
            return await scenario(target)
        finally:
            await server.stop(0)

    return asyncio.run(main())


@pytest.mark.parametrize("method", sorted(DOMAIN_ERRORS))
def test_domain_errors_carry_their_own_status_and_message(method: str) -> None:
    err, code = DOMAIN_ERRORS[method]
    got = _run_against_server(lambda target: _call(target, method))
    assert got == (code, str(err), None)


def test_a_bug_becomes_opaque_internal_with_a_request_id_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(target: str) -> list[tuple[grpc.StatusCode, str, bytes | None]]:
        return [
            await _call(target, "Bug"),
            await _call(target, "Bug", metadata=((REQUEST_ID_KEY, "req-42"),)),
        ]

    with caplog.at_level(logging.ERROR, logger="serving.errors"):
        (code, details, _), (code2, details2, _) = _run_against_server(scenario)

    assert code == code2 == grpc.StatusCode.INTERNAL
    assert details.startswith("internal error (request id ") and SECRET not in details
    assert details2 == "internal error (request id req-42)"
    logged = [r for r in caplog.records if r.exc_info and "req-42" in r.getMessage()]
    assert logged, "the bug must be logged with its traceback and the request id"
    assert logged[0].exc_info is not None and SECRET in str(logged[0].exc_info[1])
    assert f"/{SERVICE}/Bug" in logged[0].getMessage()


def test_server_keeps_serving_after_errors_and_handler_aborts_pass_through() -> None:
    async def scenario(target: str) -> dict[str, Any]:
        for method in ("Bug", "NotFound", "Invalid", "Bug"):
            await _call(target, method)
        echo = await _call(target, "Echo", b"still here")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            serving = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
                unknown = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                unknown = err.code()
        return {"echo": echo, "serving": serving.status, "unknown": unknown}

    got = _run_against_server(scenario)
    assert got["echo"] == (grpc.StatusCode.OK, "", b"still here")
    assert got["serving"] == health_pb2.HealthCheckResponse.SERVING
    assert got["unknown"] == grpc.StatusCode.NOT_FOUND  # the health servicer's own abort, not INTERNAL


class _SlowOuter(grpc.aio.ServerInterceptor):
    """An interceptor outside the error interceptor (where the access log and metrics sit) that
    awaits before it records the call's end, widening the window in which a status sent too early
    would reach the client first."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        inner = handler.unary_unary

        async def wrapped(request: bytes, context: Any) -> Any:
            try:
                return await inner(request, context)
            finally:
                await asyncio.sleep(0.3)
                self.finished.append(details.method)

        return grpc.unary_unary_rpc_method_handler(wrapped)


def test_a_domain_error_reaches_the_client_only_after_the_outer_interceptors_finish() -> None:
    # `context.abort` sent the status at once, so a metrics scrape right after a failed call could miss
    # it (a CI failure); the status must leave only when every interceptor has counted the call
    outer = _SlowOuter()

    async def main() -> tuple[tuple[grpc.StatusCode, str, bytes | None], list[str]]:
        server = grpc.aio.server(interceptors=[outer, ErrorInterceptor()])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Invalid": grpc.unary_unary_rpc_method_handler(HANDLERS["Invalid"])}
                )
            ]
        )
        target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        try:
            got = await _call(target, "Invalid")
            return got, list(outer.finished)  # what had finished when the client got its answer
        finally:
            await server.stop(0)

    got, finished = asyncio.run(main())
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and got[1] == str(DOMAIN_ERRORS["Invalid"][0])
    assert finished == [f"/{SERVICE}/Invalid"]
