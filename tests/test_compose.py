"""docker-compose.yml and Dockerfile: the deployment contract, checked without Docker.

redis persists (append-only file on a named volume); the one-shot trainer writes the artifact into
the `artifacts` volume, which the server mounts read-only; the server starts only after redis is
healthy and the trainer succeeded, publishes gRPC on 50051, and is health-checked over grpc.health.v1.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRPC_PORT = "50051"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; compose checks need it")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"redis-data", "artifacts", "events"} <= set(compose.get("volumes") or {})
    return compose["services"]


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only), for short ("src:dst[:ro]") and long volume syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts[target] = (source, "ro" in mode)
        else:
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only", False)))
    return mounts


def _words(command: str | list[str]) -> str:
    return command if isinstance(command, str) else " ".join(command)


def test_services_exist(services):
    assert {"redis", "trainer", "server", "retrain"} <= set(services)


def test_retrain_loop_exports_retrains_and_promotes_into_the_served_root(services):
    """The scheduled retrain: events exported from the server's Redis stream (and trimmed), a warm-started
    retrain from the live root into the same root (which the server watches), after redis and the
    first training; events kept on their own volume so the history window survives restarts."""
    retrain = services["retrain"]
    command = _words(retrain["command"])
    assert re.search(r"export-events --redis redis://redis:6379/\d+ --trim", command)
    assert re.search(r"retrain --from /artifacts --log \S+ --history /events --window \d+", command)
    assert "--out /artifacts" in command and "sleep" in command
    mounts = _mounts(retrain)
    assert mounts["/artifacts"] == ("artifacts", False) and mounts["/events"] == ("events", False)
    assert _mounts(services["server"])["/artifacts"] == ("artifacts", True)
    assert retrain["depends_on"]["redis"]["condition"] == "service_healthy"
    assert retrain["depends_on"]["trainer"]["condition"] == "service_completed_successfully"


def test_redis_persists(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert re.search(r"--appendonly\s+yes", _words(redis["command"]))
    assert _mounts(redis)["/data"] == ("redis-data", False)
    assert "ping" in _words(redis["healthcheck"]["test"])


def test_trainer_is_a_one_shot_job_writing_artifacts(services):
    trainer = services["trainer"]
    assert trainer["build"] == "."
    assert str(trainer["restart"]) == "no"
    command = _words(trainer["command"])
    assert "python -m training synth" in command and "python -m training fit" in command
    assert "--out /artifacts" in command
    assert _mounts(trainer)["/artifacts"] == ("artifacts", False)


def test_server_reads_artifacts_read_only(services):
    assert _mounts(services["server"])["/artifacts"] == ("artifacts", True)


def test_server_publishes_grpc_and_metrics(services):
    server = services["server"]
    assert server["build"] == "."
    published = {str(p).split(":")[-1] for p in server["ports"]}
    assert {GRPC_PORT, "9100"} <= published
    command = _words(server["command"])
    assert "-m serving" in command
    assert f"--port {GRPC_PORT}" in command
    assert "--features redis://redis:6379/0" in command
    # with --processes N, process i serves metrics on 9100 + i: each one's port is published
    words = command.split()
    processes = int(words[words.index("--processes") + 1]) if "--processes" in words else 1
    assert {str(9100 + i) for i in range(processes)} <= published


def test_server_healthcheck_uses_grpc_health(services):
    test = services["server"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "serving.healthcheck" in test and GRPC_PORT in test


def test_server_waits_for_redis_and_trainer(services):
    depends = services["server"]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["trainer"]["condition"] == "service_completed_successfully"


# --- Dockerfile (plain text; needs no parser)


@pytest.fixture(scope="module")
def dockerfile() -> str:
    path = ROOT / "Dockerfile"
    assert path.is_file()
    return path.read_text()


def test_dockerfile_pins_cpu_torch_before_the_project(dockerfile):
    torch = re.search(r"pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu", dockerfile)
    project = re.search(r"pip install \.\s*$", dockerfile, re.MULTILINE)
    assert torch and project and torch.start() < project.start()


def test_dockerfile_base_user_ports_and_cmd(dockerfile):
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(rf"^EXPOSE .*\b{GRPC_PORT}\b", dockerfile, re.MULTILINE)
    assert re.search(r"^EXPOSE .*\b9100\b", dockerfile, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^CMD \["python", "-m", "serving"\]', dockerfile, re.MULTILINE)
    for package in ("recsys", "training", "serving", "proto", "bench"):
        assert re.search(rf"^COPY {package}/ ", dockerfile, re.MULTILINE), package
