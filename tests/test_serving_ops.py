"""Operating the server: metrics, the user-state cache, degraded mode, limits, access control, TLS,
request ids and access logs.

Servers run in this process (`running_server`: `build_server` on an event loop in a background
thread, real sockets on loopback), so a test can read the server's own metrics registry and occupy
its real worker pool; Redis is the session's pytest-redis server, or a redis-server of the test's own
where the test stops it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from proto.recsys.v1 import recommender_pb2 as pb
from proto.recsys.v1 import recommender_pb2_grpc as pb_grpc
from serving import healthcheck
from serving.client import RecommenderClient
from serving.config import ServerConfig
from serving.errors import REQUEST_ID_KEY
from serving.metrics import SERIES, Metrics
from serving.server import App, build_server
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

T = TypeVar("T")


# --- helpers (also used by the other tests/test_serving_*.py files) -------------------------------


@contextmanager
def running_server(artifact: Path | str, **overrides: Any) -> Iterator[App]:
    """A started in-process server on a free loopback port; metrics and LATEST polling off unless asked."""
    settings: dict[str, Any] = dict(artifact=str(artifact), port=0, metrics_port=0, reload_interval=0, workers=2)
    config = ServerConfig(**{**settings, **overrides})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    try:
        app = run(build_server(config))
        run(app.start())
        try:
            yield app
        finally:
            run(app.stop(0))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def sample(app: App, name: str, **labels: str) -> float:
    """The current value of one series in the server's registry (0 when absent)."""
    value = app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def redis_url(proc: Any, db: int = 0) -> str:
    return f"redis://{proc.host}:{proc.port}/{db}"


class RedisServer:
    """A redis-server of the test's own (append-only file, fsync on every write, so acknowledged writes
    survive a kill), which the test may kill and restart on the same port and data directory."""

    def __init__(self, data_dir: Path, password: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not on PATH; fix: apt-get install redis-server (make test does)")
        self.exe, self.dir, self.password, self.port = exe, data_dir, password, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._pings, timeout=10, what=f"redis-server on port {self.port}")

    def _pings(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


# --- metrics -----------------------------------------------------------------------------------------


def test_metrics_endpoint_exposes_every_documented_series(trained) -> None:
    with running_server(trained.artifact, metrics_port=free_port()) as app, RecommenderClient(app.target) as client:
        client.recommend("u00001", k=5)
        client.recommend("u00001", k=5)  # a cache hit
        client.rank("u00001", ["i00001", "i00002"])
        client.record("ops-metrics-user", [("i00003", 0.0, "click")])
        client.info()
        with pytest.raises(grpc.RpcError):
            client.recommend("u00001", k=0)
        assert app.metrics_port == app.config.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5).read().decode()

    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    for name, kind, _ in SERIES:
        want = f"{name}_bucket" if kind == "histogram" else name
        assert want in exposed, f"{want} is not exposed"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    svc = "recsys.v1.Recommender"
    assert value("recsys_grpc_requests_total", service=svc, method="Recommend", code="OK") == 2
    assert value("recsys_grpc_requests_total", service=svc, method="Recommend", code="INVALID_ARGUMENT") == 1
    assert value("recsys_grpc_requests_total", service=svc, method="RecordEvents", code="OK") == 1
    assert value("recsys_grpc_request_duration_seconds_count", service=svc, method="Rank") == 1
    assert value("recsys_grpc_requests_in_flight") == 0
    assert value("recsys_user_cache_lookups_total", result="hit") >= 1
    assert value("recsys_user_cache_lookups_total", result="miss") >= 1
    for method, stage in [
        ("Recommend", "queue"),
        ("Recommend", "feature_fetch"),
        ("Recommend", "batch_wait"),
        ("Recommend", "retrieval_and_ranking"),
        ("Recommend", "serialization"),
        ("Rank", "batch_wait"),
        ("Rank", "ranking"),
        ("RecordEvents", "feature_write"),
    ]:
        assert value("recsys_stage_duration_seconds_count", method=method, stage=stage) >= 1, (method, stage)
    state_lookups = sum(value("recsys_state_cache_lookups_total", result=r) for r in ("hit", "miss"))
    assert state_lookups >= 3 and value("recsys_state_cache_entries") >= 1  # two Recommends and a Rank, at least
    info = [s for s in samples if s[0] == "recsys_model_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == trained.artifact.name
    assert value("recsys_gc_pause_seconds_count", generation="2") >= 1  # the load's own collection (freeze_heap)

    readme = (ROOT / "README.md").read_text()
    undocumented = [name for name, _, _ in SERIES if name not in readme]
    assert not undocumented, f"document these series in README.md: {undocumented}"


def test_gc_pauses_are_counted_by_generation_in_their_bucket() -> None:
    registry = Metrics().registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(f"recsys_gc_pause_seconds_{name}", {"generation": "2", **labels}) or 0.0

    count, total, under_1s = sample("count"), sample("sum"), sample("bucket", le="1.0")
    started = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - started
    assert sample("count") == count + 1
    assert 0 < sample("sum") - total <= took
    assert sample("bucket", le="+Inf") == count + 1
    assert sample("bucket", le="1.0") == under_1s + (took < 1.0)


def test_request_id_is_echoed_and_each_call_logs_one_json_line(trained, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="serving.access"), running_server(trained.artifact) as app:
        with grpc.insecure_channel(app.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            request = pb.RecommendRequest(user_id="u00002", k=3)
            _, call = stub.Recommend.with_call(request, metadata=((REQUEST_ID_KEY, "req-ops-1"),), timeout=5)
            assert (REQUEST_ID_KEY, "req-ops-1") in call.trailing_metadata()
            _, call = stub.Recommend.with_call(request, timeout=5)
            generated = dict(call.trailing_metadata())[REQUEST_ID_KEY]
            assert generated and generated != "req-ops-1"
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(pb.RecommendRequest(user_id="u00002", k=0), metadata=((REQUEST_ID_KEY, "req-bad"),))
            assert (REQUEST_ID_KEY, "req-bad") in err.value.trailing_metadata()

    lines = {}
    for record in caplog.records:
        if record.name == "serving.access":
            fields = json.loads(record.getMessage())
            lines[fields["request_id"]] = (record.levelno, fields)
    level, ok = lines["req-ops-1"]
    assert level == logging.DEBUG
    assert ok["method"] == "/recsys.v1.Recommender/Recommend" and ok["status"] == "OK"
    assert ok["user_id"] == "u00002" and ok["model_version"] == trained.artifact.name and ok["latency_ms"] > 0
    assert generated in lines
    level, bad = lines["req-bad"]
    assert level == logging.WARNING and bad["status"] == "INVALID_ARGUMENT" and "k=" in bad["details"]


# --- cache and feature store ---------------------------------------------------------------------------


def test_record_then_recommend_reflects_the_click_through_redis_with_the_cache_on(trained, redis_proc) -> None:
    user = "ops-cache-user"
    with (
        running_server(trained.artifact, features=redis_url(redis_proc), cache_size=100, cache_ttl=60) as app,
        RecommenderClient(app.target) as client,
    ):
        cold = client.recommend(user, k=10)
        assert cold.reason == "cold_start"
        assert client.recommend(user, k=10).reason == "cold_start"  # served from the cache
        assert sample(app, "recsys_user_cache_lookups_total", result="hit") == 1
        fetches = sample(app, "recsys_stage_duration_seconds_count", method="Recommend", stage="feature_fetch")
        assert fetches == 1

        clicked = cold.items[0].item_id
        ack = client.record(user, [(clicked, time.time(), "click", "ops-cache-e1")])
        assert ack.history_length == 1
        warm = client.recommend(user, k=10)  # a 60 s TTL: a stale entry would still say cold_start
        assert warm.personalised and warm.reason == "personalised"
        assert clicked not in [it.item_id for it in warm.items]
        assert sample(app, "recsys_user_cache_lookups_total", result="hit") == 2  # refreshed by the write
        assert sample(app, "recsys_stage_duration_seconds_count", method="Recommend", stage="feature_fetch") == 1

    r = redis.Redis(host=redis_proc.host, port=redis_proc.port, decode_responses=True)
    assert r.smembers(f"recsys:u:{{{user}}}:ids") == {"ops-cache-e1"}
    # a second server, with a cold cache, reads the same click from Redis
    with running_server(trained.artifact, features=redis_url(redis_proc)) as app2, RecommenderClient(app2.target) as c2:
        assert c2.recommend(user, k=10).reason == "personalised"


def test_store_outage_degrades_reads_refuses_writes_and_recovers(trained, own_redis: RedisServer) -> None:
    user, newcomer = "ops-outage-user", "ops-outage-newcomer"
    with (
        running_server(trained.artifact, features=own_redis.url, cache_ttl=0.2) as app,
        RecommenderClient(app.target) as client,
    ):
        items = [it.item_id for it in client.recommend(user, k=3).items]
        acked = []
        for i, item in enumerate(items):
            client.record(user, [(item, 1_700_000_000.0 + i, "click", f"ops-outage-e{i}")])
            acked.append(f"ops-outage-e{i}")
        assert client.recommend(user, k=5).reason == "personalised"  # cached now

        own_redis.kill()
        time.sleep(0.25)  # the cached entry expires: only a stale copy is left
        degraded = client.recommend(user, k=5)
        assert (degraded.reason, degraded.personalised) == ("degraded_cache", True)
        assert not set(items) & {it.item_id for it in degraded.items}, "the cached history still excludes seen items"
        fallback = client.recommend(newcomer, k=5)
        assert (fallback.reason, fallback.personalised, len(fallback.items)) == ("degraded_fallback", False, 5)
        assert client.rank(user, items).reason == "degraded_cache"
        assert client.rank(newcomer, items).reason == "degraded_fallback"
        with pytest.raises(grpc.RpcError) as err:
            client.record(user, [(items[0], 1_700_000_100.0, "click", "ops-outage-lost")])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "fix" in err.value.details()
        assert sample(app, "recsys_degraded_responses_total", method="Recommend", reason="degraded_cache") == 1
        assert sample(app, "recsys_degraded_responses_total", method="Rank", reason="degraded_fallback") == 1

        own_redis.start()  # same port, same append-only file
        wait_for(lambda: client.recommend(user, k=5).reason == "personalised", what="recovery")
        assert client.recommend(newcomer, k=5).reason == "cold_start"
        ack = client.record(user, [(items[0], 1_700_000_200.0, "cart", "ops-outage-after")])
        assert ack.history_length == len(acked) + 1

    with own_redis.client() as r:
        held = r.smembers(f"recsys:u:{{{user}}}:ids")
        assert set(acked) | {"ops-outage-after"} == held, "every acknowledged event survives the outage"
        assert {e["event_id"] for _, e in r.xrange("recsys:events")} == held


# --- limits ---------------------------------------------------------------------------------------------


def test_concurrency_limit_queued_deadlines_and_message_size(trained) -> None:
    with running_server(trained.artifact, workers=1, max_concurrent=2, max_message_bytes=64 * 1024) as app:
        gate = threading.Event()
        app.executor.submit(gate.wait, 30)  # the only worker is busy: admitted calls queue behind it
        try:
            with grpc.insecure_channel(app.target) as channel:
                stub = pb_grpc.RecommenderStub(channel)
                request = pb.RecommendRequest(user_id="u00003", k=5)
                patient = stub.Recommend.future(request, timeout=20)
                hasty = stub.Recommend.future(request, timeout=0.5)
                wait_for(lambda: app.guard.active == 2, what="two admitted calls")
                with pytest.raises(grpc.RpcError) as err:
                    stub.Recommend(request, timeout=5)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_concurrent=2" in err.value.details() and "fix:" in err.value.details()
                with pytest.raises(grpc.RpcError) as late:
                    hasty.result()
                assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                gate.set()
                assert patient.result().items
        finally:
            gate.set()
        # the call whose deadline passed in the queue was never computed
        computed = sample(app, "recsys_stage_duration_seconds_count", method="Recommend", stage="retrieval_and_ranking")
        assert computed == 1

        # a message over max_message_bytes: a clean RESOURCE_EXHAUSTED, and the server carries on
        big = pb.RankRequest(user_id="u00003", item_ids=["i00001"] * 10_000)  # ~80 KB
        with grpc.insecure_channel(app.target) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.RecommenderStub(channel).Rank(big, timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in err.value.details()
        with RecommenderClient(app.target) as client:
            assert client.recommend("u00003", k=5).items


# --- access control and TLS ---------------------------------------------------------------------------


def _code(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_tokens_guard_writes_and_admin_and_optionally_reads(trained) -> None:
    tokens = dict(write_tokens=("w-token",), read_tokens=("r-token",))
    with running_server(trained.artifact, **tokens) as app:
        anonymous = RecommenderClient(app.target)
        wrong = RecommenderClient(app.target, token="nope")
        reader = RecommenderClient(app.target, token="r-token")
        writer = RecommenderClient(app.target, token="w-token")
        event = [("i00001", 0.0, "click")]
        U, P, OK = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK
        assert _code(lambda: anonymous.record("ops-auth", event)) == U
        assert _code(lambda: wrong.record("ops-auth", event)) == U
        assert _code(lambda: reader.record("ops-auth", event)) == P
        assert _code(lambda: writer.record("ops-auth", event)) == OK
        assert _code(anonymous.reload) == U
        assert _code(reader.reload) == P
        assert writer.reload().changed is False  # a version dir: nothing to reload
        for client in (anonymous, wrong, reader, writer):  # reads stay open
            assert _code(lambda c=client: c.recommend("ops-auth", k=3)) == OK
            assert _code(client.info) == OK
        assert anonymous.health() == "SERVING"
        for client in (anonymous, wrong, reader, writer):
            client.close()

    with running_server(trained.artifact, require_read_token=True, **tokens) as app:
        clients = {t: RecommenderClient(app.target, token=t) for t in (None, "nope", "r-token", "w-token")}
        codes = {t: _code(lambda c=c: c.recommend("ops-auth", k=3)) for t, c in clients.items()}
        assert codes == {None: U, "nope": U, "r-token": OK, "w-token": OK}
        assert _code(lambda: clients[None].rank("ops-auth", ["i00001"])) == U
        assert _code(clients[None].info) == U
        assert clients[None].health() == "SERVING"  # probes carry no token
        for client in clients.values():
            client.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: with the `cryptography` package when it
    is installed, else with the `openssl` CLI, else the test is skipped."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available to make a certificate")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def test_tls_with_a_self_signed_certificate(trained, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with running_server(trained.artifact, tls_cert=str(cert), tls_key=str(key), write_tokens=("w",)) as app:
        target = f"localhost:{app.port}"
        with RecommenderClient(target, tls_ca=cert, token="w") as client:
            assert client.recommend("u00004", k=3).items
            assert client.record("ops-tls", [("i00001", 0.0, "click")]).accepted == 1
        with RecommenderClient(target, timeout=2) as plaintext:
            assert _code(lambda: plaintext.recommend("u00004", k=3)) == grpc.StatusCode.UNAVAILABLE
        assert healthcheck.check(target, tls_ca=str(cert)) == "SERVING"
