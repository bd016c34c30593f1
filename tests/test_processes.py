"""`python -m serving --processes N` (serving.processes): N real server processes on one port, over
real sockets, against a throwaway redis-server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from serving.client import RecommenderClient
from serving.processes import reserve_ports
from tests.conftest import ROOT
from tests.test_e2e import redis_url

pytestmark = pytest.mark.slow


def run_serving(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "serving", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_serving(target: str, proc: subprocess.Popen[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the supervisor exited with {proc.returncode}: {proc.communicate()[0]}")
        with contextlib.suppress(grpc.RpcError), RecommenderClient(target, timeout=1.0) as c:
            if c.health() == "SERVING":
                return
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"{target} did not become SERVING: {proc.communicate()[0]}")


@contextlib.contextmanager
def supervisor(artifact: Path, features: str, port: int, mport: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "serving", "--artifact", str(artifact), "--features", features, "--processes", "2"]
    cmd += ["--port", str(port), "--metrics-port", str(mport), "--reload-interval", "0", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            for pid in children(proc.pid) if Path(f"/proc/{proc.pid}").exists() else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()


def test_two_processes_share_the_port_and_the_store_and_a_dead_one_comes_back(trained, redis_proc) -> None:
    port, mport = reserve_ports("127.0.0.1", 0, 2), reserve_ports("127.0.0.1", 0, 1)
    with supervisor(trained.artifact, redis_url(redis_proc), port, mport, "--cache-ttl", "0") as proc:
        own = [f"127.0.0.1:{port + 1}", f"127.0.0.1:{port + 2}"]  # each process's own port
        for target in (f"127.0.0.1:{port}", *own):
            wait_serving(target, proc)
        pids = children(proc.pid)
        assert len(pids) == 2, pids

        # an event recorded through one process shows in the next answer of the other (one shared store,
        # no per-process state cache with cache_ttl 0)
        user, now = "mp-user-1", time.time()  # one request time: the same history gives the same answer
        with RecommenderClient(own[0]) as first, RecommenderClient(own[1]) as second:
            cold = second.recommend(user, k=10, request_time=now)
            assert cold.reason == "cold_start"
            clicked = cold.items[2].item_id
            assert first.record(user, [(clicked, now - 5, "click")]).history_length == 1
            warm = second.recommend(user, k=10, request_time=now)
            assert warm.personalised and clicked not in [it.item_id for it in warm.items]
            assert first.recommend(user, k=10, request_time=now).items == warm.items  # the same model in both

            # a reload naming a version would reach one process: refused, with what to do instead
            with pytest.raises(grpc.RpcError) as err:
                first.reload(trained.artifact.name)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "version" in err.value.details() and "promote" in err.value.details()

        # each process counts its own calls on its own metrics port
        import urllib.request

        for m in (mport, mport + 1):
            text = urllib.request.urlopen(f"http://127.0.0.1:{m}/metrics", timeout=5).read().decode()
            ok = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("recsys_grpc_requests_total{")
                and 'method="Recommend"' in line
                and 'code="OK"' in line
            ]
            assert sum(ok) >= 1, (m, ok)

        # a process that dies is restarted; the other serves meanwhile
        os.kill(pids[1], signal.SIGKILL)
        with RecommenderClient(own[0]) as first:
            assert first.recommend(user, k=5).personalised
        wait_serving(own[1], proc)
        after = children(proc.pid)
        assert pids[0] in after and pids[1] not in after and len(after) == 2, (pids, after)
        with RecommenderClient(own[1]) as second:
            assert second.recommend(user, k=10, request_time=now).items == warm.items

        # SIGTERM: both drain and stop, and the supervisor exits 0
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped 2 server processes" in out
        for pid in after:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_what_several_processes_cannot_share_is_refused_before_they_start(trained, redis_proc, tmp_path) -> None:
    # an in-memory store would be one store a process
    port = reserve_ports("127.0.0.1", 0, 2)  # the port and the two processes' own after it
    done = run_serving("--artifact", str(trained.artifact), "--processes", "2", "--port", str(port))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "processes=2" in line and "memory://" in line and "fix:" in line, line

    # a busy port among the processes' own ones
    port = reserve_ports("127.0.0.1", 0, 2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port + 2))
        busy.listen()
        url = redis_url(redis_proc)
        done = run_serving(
            "--artifact", str(trained.artifact), "--features", url, "--processes", "2", "--port", str(port)
        )
    assert done.returncode == 3, done.stderr
    assert f"127.0.0.1:{port + 2}" in done.stderr and "fix:" in done.stderr, done.stderr

    # a bad artifact stops both children as they start, and the supervisor exits with their code
    port = reserve_ports("127.0.0.1", 0, 2)
    args = ["--artifact", str(tmp_path / "missing"), "--features", url, "--processes", "2", "--port", str(port)]
    done = run_serving(*args, "--metrics-port", "0")
    assert done.returncode == 4, done.stderr
    assert "while starting" in done.stderr
