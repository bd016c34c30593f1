"""Container health probe: `python -m serving.healthcheck [--host H] [--port P] [--service NAME] [--tls-ca CA]`.

Exits 0 when the standard grpc.health.v1 service reports SERVING, 1 otherwise (NOT_SERVING, unknown
service, unreachable or timed out), with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout: float = 2.0, tls_ca: str | None = None) -> str:
    """The serving status name ("SERVING", "NOT_SERVING", ...); raises grpc.RpcError when unreachable.
    `tls_ca`: the PEM file of the CA that signed a TLS server's certificate."""
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--service", default="", help='"" = the whole server; or e.g. recsys.v1.Recommender')
    p.add_argument("--timeout", type=float, default=2.0, help="seconds")
    p.add_argument("--tls-ca", help="PEM file of the CA that signed the server's certificate (a TLS server)")
    args = p.parse_args(argv)
    target = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        status = check(target, args.service, args.timeout, args.tls_ca)
    except grpc.RpcError as err:
        print(f"unhealthy: {target}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: {target}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
