"""Shared pytest fixtures: a throwaway redis-server, a small trained model, real server processes."""

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from pytest_redis import factories

from recsys.data import load_log
from training import synth
from training.pipeline import TrainReport, train_and_export

# A throwaway redis-server (/usr/bin/redis-server) on a free port, started once per session, and a
# client on db 0 that flushes everything after each test that uses it.
redis_proc = factories.redis_proc(port=None)
redisdb = factories.redisdb("redis_proc")


# --- a small trained model, shared by every test that needs one (trained once per session) ---------

ROOT = Path(__file__).resolve().parents[1]
# small enough to train in seconds, large enough that a sequence model clearly beats popularity
TINY = synth.SynthConfig(n_users=400, n_items=200, n_categories=10, events_per_user=25.0, seed=0)
TINY_TRAIN = ["train.epochs=5", "train.progress=false", "train.seed=0"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"reproduce: cd {ROOT} && make test (every seed is fixed in the tests)"]


@pytest.fixture(scope="session")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synth.write(TINY, tmp_path_factory.mktemp("demo"), "parquet")


@pytest.fixture(scope="session")
def trained(demo_log: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TrainReport:
    logging.getLogger("training").setLevel(logging.WARNING)
    clog = load_log(demo_log["clicks"], demo_log["items"], demo_log["users"])
    out = tmp_path_factory.mktemp("artifacts")
    report = train_and_export(clog, out, TINY_TRAIN, run_dir=tmp_path_factory.mktemp("run"))
    assert report is not None  # one process: rank 0
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m serving` in a real subprocess on a loopback port."""

    def __init__(self, artifact: Path, features: str, port: int, extra: Sequence[str] = ()):
        self.port = port
        self.target = f"127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                "--artifact",
                str(artifact),
                "--features",
                features,
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        from serving.client import RecommenderClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                with RecommenderClient(self.target, timeout=1.0) as c:
                    if c.health() == "SERVING":
                        return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise TimeoutError("server did not become SERVING")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., "ServerProcess"]]:
    started: list[ServerProcess] = []

    def start(artifact: Path, features: str = "memory://", *extra: str) -> ServerProcess:
        s = ServerProcess(artifact, features, free_port(), extra)
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()
