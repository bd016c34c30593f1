"""Several server processes on one port: `python -m serving --processes N`.

Why: one Python process serves through one interpreter lock. Its asyncio loop, its worker threads and
its model thread take turns holding it, so on the 2-core machine of README, Speed a single process at
concurrency 16 kept about a third of the CPU idle (`bench.serve`'s c=16 level: the server process used
1.2 of the 2 cores). N processes, each a complete server with its own model thread, lock and
`torch_threads // N` intra-op threads, use every core.

How: this supervisor starts N children, each `python -m serving` with the same settings (the same
command line, config file and environment) plus `--processes 1 --process-slot i/N`, a port number
fixed by the supervisor (one free port picked here when `port` is 0) and metrics on `metrics_port + i`.
The children listen on the same port with SO_REUSEPORT, so the kernel spreads incoming *connections*
over them: one client connection (one grpc channel) reaches one process, and many connections spread
at random (measured: 64 connections split 36% / 64% between two processes). Each child also listens on
a port of its own, `port + 1 + i`, for clients that balance calls themselves: grpc's `round_robin`
over `ipv4:HOST:P+1,HOST:P+2,...` gives each process every N-th call (bench.serve drives it so), as
an HTTP/2-aware proxy (Envoy) in front of those ports would.

What stays the same as one process: every child reads and writes the shared feature store (Redis;
`memory://` is refused, since each process would keep its own), polls LATEST for hot reloads and keeps
its own caches. A call always sees a state at most `cache_ttl` old, as with several replicas, and a
client's calls on one connection reach one process, so its own RecordEvents shows in its next
Recommend at once. `Admin.Reload` naming a version is refused (it would reach one process); promoting the
version moves LATEST, which every process follows.

Lifecycle: SIGTERM or SIGINT is passed to every child, which drains for `grace_s`; the supervisor exits
0 once they have. A child counts as started once it has written a byte to its pipe to the supervisor
(`--ready-fd`), which it does right after loading the model and starting to listen (so a child that
died after answering calls is never taken for one that failed to start). A started child that dies
is restarted while the others keep serving; one that dies before it started (a bad artifact, a port
taken) stops them all, and the supervisor exits with that child's exit code (`python -m serving`'s:
2 config, 3 port or store, 4 artifact).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from recsys.errors import InvalidArgument, Unavailable
from serving.config import ServerConfig

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
POLL_S = 0.2


def effective_processes(config: ServerConfig) -> int:
    """`config.processes`, or for 0 one process per core this process may use."""
    return config.processes or len(os.sched_getaffinity(0))


def check(config: ServerConfig, n: int) -> None:
    """What several processes cannot share, refused before anything starts."""
    if n > 1 and urlsplit(config.features).scheme == "memory":
        raise InvalidArgument(
            f"server config: processes={n} with features={config.features!r}: each process would keep its own "
            "in-memory store, so events recorded through one would never reach the others; fix: use a shared "
            "store (--features redis://HOST:PORT/DB), or processes = 1"
        )


def reserve_ports(host: str, port: int, n: int) -> int:
    """The port the children will share, after checking that it and the children's own ports (the next
    `n`) are free; for `port` 0, the first of such a free run. (The sockets are closed again before the
    children bind: a process that takes a port in between makes a child fail at start-up.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100 if port == 0 else 1):
        base, at = port, port
        try:
            with contextlib.ExitStack() as stack:
                for i in range(n + 1):
                    s = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
                    at = base + i if base else 0
                    s.bind((host, at))
                    base = base or int(s.getsockname()[1])
                return base
        except OSError as err:
            if port:
                raise Unavailable(
                    f"cannot listen on {host}:{at} ({err.strerror}); fix: pick a --port whose next {n} ports are "
                    f"free too (processes={n} listen on them), or another --host"
                ) from None
    raise Unavailable(f"found no {n + 1} consecutive free ports on {host}; fix: pass a free --port")


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    ready: int  # read end of the pipe the child writes one byte to once it has started (non-blocking)
    started: bool = False

    def has_started(self) -> bool:
        """Whether the child has said it started (reading its pipe, which never blocks)."""
        if not self.started:
            with contextlib.suppress(BlockingIOError):
                self.started = os.read(self.ready, 1) == b"1"
        return self.started


def child_command(argv: Sequence[str], slot: int, n: int, port: int, config: ServerConfig) -> list[str]:
    """The supervisor's own command line with the per-child settings appended (later flags win)."""
    threads = config.torch_threads or max(1, len(os.sched_getaffinity(0)) // n)
    metrics = config.metrics_port + slot if config.metrics_port else 0
    return [
        sys.executable,
        "-m",
        "serving",
        *argv,
        "--processes",
        "1",
        "--process-slot",
        f"{slot}/{n}",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics),
        "--torch-threads",
        str(threads),
    ]


def supervise(config: ServerConfig, argv: Sequence[str]) -> int:
    """Run `effective_processes(config)` children until SIGTERM/SIGINT; returns the exit code."""
    n = effective_processes(config)
    check(config, n)
    port = reserve_ports(config.host, config.port, n)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: dict[int, _Child] = {}

    def start(slot: int) -> None:
        if slot in children:
            os.close(children[slot].ready)
        ready, write = os.pipe()
        os.set_blocking(ready, False)
        cmd = [*child_command(argv, slot, n, port, config), "--ready-fd", str(write)]
        children[slot] = _Child(slot, subprocess.Popen(cmd, pass_fds=(write,)), ready)
        os.close(write)  # the child's copy is the only one: the pipe ends when the child does

    code = 0
    try:
        for slot in range(n):
            start(slot)
        logger.info(
            "supervising %d server processes on port %d (and their own ports %d..%d; metrics on %s; pids %s)",
            n,
            port,
            port + 1,
            port + n,
            f"ports {config.metrics_port}..{config.metrics_port + n - 1}" if config.metrics_port else "off",
            ", ".join(str(c.proc.pid) for c in children.values()),
        )
        while not stopping:
            time.sleep(POLL_S)
            for slot, child in list(children.items()):
                rc = child.proc.poll()
                if rc is None:
                    if not child.started and child.has_started():
                        logger.info("process %d/%d (pid %d) is serving", slot, n, child.proc.pid)
                    continue
                if stopping:
                    break
                if not child.has_started():  # the pipe keeps the byte of a child that died since
                    logger.error("process %d/%d exited with %d while starting; stopping the others", slot, n, rc)
                    code = rc or 1
                    stopping = True
                    break
                logger.error("process %d/%d (pid %d) exited with %d; restarting it", slot, n, child.proc.pid, rc)
                time.sleep(RESTART_DELAY_S)
                start(slot)
    finally:
        for child in children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + config.grace_s + 30.0
        for child in children.values():
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("process %d/%d did not stop in time; killing it", child.slot, n)
                child.proc.kill()
                child.proc.wait()
        for child in children.values():
            os.close(child.ready)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("stopped %d server processes", n)
    return code
