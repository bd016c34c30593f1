"""The serving command lines: configuration precedence (TOML < env < flags), the bulk loader
(`python -m serving.features load`), and a graceful SIGTERM of `python -m serving` in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from serving.__main__ import main as serve_main
from serving.__main__ import parse_args
from serving.client import RecommenderClient
from serving.config import ServerConfig, load_config
from serving.features import main as features_main
from tests.conftest import ROOT, free_port
from tests.test_serving_ops import RedisServer, redis_url, wait_for

TOML = """
artifact = "/models"
port = 1111
workers = 3
cache_ttl = 2
features = "redis://:toml-secret@db:6379/0"
write_tokens = ["from-toml"]
"""


def test_flags_override_env_override_toml_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "serving.toml"
    path.write_text(TOML)
    env = {"RECSYS_PORT": "2222", "RECSYS_CACHE_SIZE": "7", "RECSYS_WRITE_TOKENS": "env-a, env-b", "HOME": "/x"}
    flags = vars(parse_args(["--config", str(path), "--port", "3333", "--require-read-token"]))
    config = load_config(flags, env, path=flags.pop("config"))
    assert config.artifact == "/models"  # TOML
    assert (config.workers, config.cache_ttl) == (3, 2.0)  # TOML (an integer where a float is due is fine)
    assert config.cache_size == 7 and config.write_tokens == ("env-a", "env-b")  # env over TOML
    assert config.port == 3333 and config.require_read_token is True  # flags over env
    assert config.max_concurrent == ServerConfig.max_concurrent  # default
    # the config file may also come from RECSYS_CONFIG
    assert load_config({}, {"RECSYS_CONFIG": str(path)}).port == 1111

    masked = config.masked()
    assert masked["features"] == "redis://:***@db:6379/0" and masked["write_tokens"] == ["***", "***"]
    assert "toml-secret" not in repr(config) and "env-a" not in repr(config)


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("prot = 50051\n", {}, "unknown key 'prot'; valid keys: artifact, features, host, port,"),
        ('port = "50051"\n', {}, "port = '50051' is not an integer"),
        ("[server]\nport = 1\n", {}, "unknown key 'server'"),
        ("port = \n", {}, "not valid TOML"),
        ("", {"RECSYS_WORKERS": "many"}, "environment variable RECSYS_WORKERS: 'many' is not an integer"),
        ("", {"RECSYS_CACHE_SIZE": "-1"}, "cache_size=-1 is invalid"),
        ("processes = -1\n", {}, "processes=-1 is invalid; fix: use >= 1, or 0 for one per core"),
        ("parallel_min_mflop = -5.0\n", {}, "parallel_min_mflop=-5.0 is invalid"),
        ("", {"RECSYS_RETRIEVAL_BLEND": "-0.5"}, "retrieval_blend=-0.5 is invalid; fix: use -1 (the artifact's"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, env: dict[str, str], expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('artifact = "/models"\n' + toml)
    assert serve_main(["--config", str(path)], env=env) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


# --- bulk loader --------------------------------------------------------------------------------------


def _dump(r: redis.Redis) -> dict[str, Any]:
    """Every key and its full value."""
    out: dict[str, Any] = {}
    for key in sorted(r.scan_iter()):
        kind = r.type(key)
        if kind == "zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key] = sorted(r.smembers(key))
        elif kind == "hash":
            out[key] = r.hgetall(key)
        else:
            out[key] = (kind, r.get(key) if kind == "string" else r.dump(key))
    return out


@pytest.mark.slow
def test_bulk_load_twice_gives_the_same_redis_state(demo_log: dict[str, Path], redis_proc) -> None:
    url = redis_url(redis_proc, db=5)
    r = redis.Redis(host=redis_proc.host, port=redis_proc.port, db=5, decode_responses=True)
    r.flushdb()
    try:
        args = ["load", "--log", str(demo_log["clicks"]), "--items", str(demo_log["items"])]
        args += ["--users", str(demo_log["users"]), "--redis", url, "--max-history", "20"]
        assert features_main(args) == 0
        first = _dump(r)
        assert features_main([*args, "--no-progress"]) == 0
        assert _dump(r) == first

        histories = [k for k in first if k.endswith(":h")]
        assert len(histories) >= 300 and max(len(first[k]) for k in histories) == 20
        assert any(k.endswith(":p") for k in first) and any(k.startswith("recsys:i:") for k in first)
        assert "recsys:events" not in first, "bulk loads are not live events"
        assert features_main(["load", "--log", str(demo_log["clicks"]), "--redis", "memory://"]) == 2
    finally:
        r.flushdb()


# --- graceful shutdown ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_lets_an_in_flight_request_finish(trained, tmp_path: Path) -> None:
    store = RedisServer(tmp_path / "redis", password="redis-secret")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECSYS_ARTIFACT": str(trained.artifact),
        "RECSYS_FEATURES": store.url,
        "RECSYS_WRITE_TOKENS": "token-secret",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--port", str(port), "--metrics-port", "0", "--grace", "10"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        target = f"127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with RecommenderClient(target, timeout=1) as c:
                    return c.health() == "SERVING"
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_for(ready, timeout=90, what="server start")
        user, result = "ops-sigterm", {}
        with RecommenderClient(target, timeout=20, token="token-secret") as client:
            client.record(user, [("i00001", 1_700_000_000.0, "click", "before")])  # warm connection
            with store.client() as r:
                r.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # the next write waits 1.5 s in Redis

            def in_flight() -> None:
                start = time.monotonic()
                try:
                    result["ack"] = client.record(user, [("i00002", 1_700_000_001.0, "click", "during")])
                except Exception as err:  # noqa: BLE001 - reported below
                    result["error"] = err
                result["seconds"] = time.monotonic() - start

            thread = threading.Thread(target=in_flight)
            thread.start()
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            thread.join(timeout=30)
        assert "error" not in result, result
        assert result["ack"].history_length == 2
        assert result["seconds"] > 1.0, "the call was still running in Redis when SIGTERM arrived"
        assert proc.wait(timeout=30) == 0
        output = proc.stdout.read() if proc.stdout else ""
        print(output)
        assert "draining in-flight requests" in output and "effective config" in output
        assert "redis-secret" not in output and "token-secret" not in output, "secrets must be masked in logs"
        with store.client() as r:
            assert r.smembers(f"recsys:u:{{{user}}}:ids") == {"before", "during"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store.kill()


@pytest.mark.parametrize("slot", ["3/2", "x/2", "1"])
def test_a_bad_process_slot_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], slot: str) -> None:
    """`--process-slot i/N` is the supervisor's (serving.processes); a malformed one is refused, not run."""
    assert serve_main(["--artifact", "/models", "--process-slot", slot], env={}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--process-slot {slot!r} is invalid" in err[0] and "fix:" in err[0], err
