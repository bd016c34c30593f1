"""The server's configuration: one frozen dataclass, and where its values come from.

Precedence, lowest first: the defaults below < a TOML file (`--config PATH`, or `RECSYS_CONFIG`) <
environment variables `RECSYS_<FIELD>` (e.g. `RECSYS_PORT=50052`, `RECSYS_FEATURES=redis://...`) <
command-line flags. Every key is a field name of `ServerConfig`; the TOML file is flat:

    artifact = "/artifacts"
    features = "redis://redis:6379/0"
    cache_ttl = 2.5
    write_tokens = ["s3cret"]

An unknown TOML key fails loudly with the key and the valid ones; an unknown `RECSYS_*` variable is
only warned about (the environment is shared with other tools). List fields take a TOML array or,
in the environment, a comma-separated string; booleans take true/false (or 1/0, yes/no, on/off).
Secrets (tokens, a Redis password in `features`) never reach a log: log `masked()`.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.errors import InvalidArgument
from recsys.store import mask_url

logger = logging.getLogger(__name__)

ENV_PREFIX = "RECSYS_"
CONFIG_ENV = "RECSYS_CONFIG"  # path of a TOML file, when --config is not given
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
SCORERS = ("fast", "reference")
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class ServerConfig:
    artifact: str = ""  # a model version dir, or an artifacts root holding a LATEST pointer (then hot reload)
    features: str = "memory://"  # feature store URL: memory:// (seeded from the artifact) or redis://H:P/DB
    host: str = "127.0.0.1"  # bind address (gRPC and metrics); "0.0.0.0" inside a container, loopback by default
    port: int = 50051  # 0 picks a free port (tests read the bound one from App.port)
    max_history: int = 200  # events kept per user by the store; the model reads only its newest few
    # Server processes sharing the port (SO_REUSEPORT), each with its own model thread and interpreter
    # lock, under a supervisor (serving.processes); 0 = one per core. Needs a shared store (redis://).
    processes: int = 1
    # Threads handling requests: feature-store I/O, and waiting for the model thread (or, with
    # batch_max=0, computing). Requests beyond them queue; batches can only be as large as this allows.
    workers: int = 32
    max_message_bytes: int = 4 * 1024 * 1024  # both directions; a maximal Rank (10k ids) fits in ~2.6 MB
    grace_s: float = 5.0  # on SIGTERM, in-flight requests get this long before they are cancelled
    # torch's intra-op threads (process-wide; FAISS always gets one, see serving.server). 0 = auto: the
    # cores this process may use when one model thread computes (batch_max >= 1), else 1 (then
    # parallelism comes from the workers, and workers x torch_threads above the cores would oversubscribe).
    torch_threads: int = 0
    # Micro-batching: every model call runs on one model thread, and up to batch_max concurrent
    # Recommend calls with the same parameters become one batch (serving.batching). 0 = no model
    # thread: each worker computes its own request (the naive baseline of bench/serve.py).
    batch_max: int = 16
    # A model call whose ranking is under this many MFLOP (Recommender.ranking_flops: requests x depth x
    # the fast path's FLOPs a candidate) runs on one intra-op thread, larger ones on torch_threads. One
    # request with a 256-128 MLP at depth 500 is about 118 MFLOP (faster on one thread, measured), two
    # such requests or one with the paper's MLP about 236 and 840 (faster on two). 0 = every call on
    # torch_threads. README, Speed: the A/B runs that chose 200.
    parallel_min_mflop: float = 200.0
    # The model thread waits at most this long for requests still reading their user to join a batch;
    # a lone request (nothing else arriving) never waits.
    batch_wait_ms: float = 1.0
    metrics_port: int = 9100  # Prometheus text exposition at http://host:metrics_port/metrics; 0 disables
    # Users whose state is kept in process (LRU). A hit saves the store round trip; about 30 KB a user
    # at max_history 200, so the default costs at most ~60 MB. 0 disables the cache (and degraded_cache).
    cache_size: int = 2000
    # Seconds a cached state is used without asking the store. RecordEvents on this server refreshes
    # the entry at once; the TTL bounds how stale a state can be after writes through other replicas.
    cache_ttl: float = 5.0
    # Requests admitted at once (computing or queued for a worker), health checks excluded; past it
    # RESOURCE_EXHAUSTED, so an overload sheds load fast instead of queueing until deadlines pass.
    max_concurrent: int = 64
    reload_interval: float = 5.0  # seconds between polls of ROOT/LATEST (artifact is a root); 0 = no polling
    # Bearer tokens. Configuring any turns access control on: RecordEvents and Admin need a write token.
    write_tokens: tuple[str, ...] = ()
    read_tokens: tuple[str, ...] = ()  # allowed to read when require_read_token
    require_read_token: bool = False  # also close Recommend, Rank and GetModelInfo to calls without a token
    tls_cert: str = ""  # PEM certificate chain; with tls_key the port speaks TLS only
    tls_key: str = ""  # PEM private key for tls_cert
    log_level: str = "INFO"  # DEBUG adds one line per request
    log_format: str = "text"  # "json": every log line is one JSON object (request lines carry their fields)
    # "fast": single-pass candidate scoring (recsys.fast); "reference": the model's plain `score`, the
    # naive baseline bench/serve.py measures against. Both give the same scores (tests/test_fast.py).
    scorer: str = "fast"
    # "bf16": the fast ranker on bfloat16 weights; retrieval stays fp32. Only for CPUs with native bf16
    # (AVX512-BF16/AMX: about 1.4x faster ranking there); elsewhere emulated and ~7x slower (a warning is
    # logged). Max click-probability gap 2e-4 (bench/rank.py). "int8": the per-candidate MLP as dynamically
    # quantized int8 linears, about 2x faster ranking on AVX2 CPUs; quality parity measured by
    # `python -m bench.quality --int8` (README, Speed).
    precision: str = "fp32"
    # users whose fast-path ranking state (retrieval vector, history keys/values, the request's first-layer
    # part) is kept between requests, keyed by the encoded history itself (exact; recsys.fast.StateCache);
    # about 15 KB a user at the default sizes; 0 = off. It lives with the model: a reload starts it empty.
    state_cache: int = 4096
    # the weight of retrieval's opinion in Recommend's order (recsys.recommender.blend_order; GetModelInfo's
    # retrieval_blend): -1 = the weight the artifact chose on validation at export; 0 = the ranker's order
    # and click probabilities alone (Recommend's scores then equal Rank's); applies to every model reloaded
    retrieval_blend: float = -1.0

    def __post_init__(self) -> None:
        tokens = (*self.write_tokens, *self.read_tokens)
        checks: list[tuple[str, bool, str]] = [
            ("artifact", bool(self.artifact), "pass --artifact DIR (or artifact in the config, or RECSYS_ARTIFACT)"),
            ("port", 0 <= self.port <= 65535, "use 0..65535 (0 = any free port)"),
            ("max_history", self.max_history >= 1, "use >= 1"),
            ("processes", self.processes >= 0, "use >= 1, or 0 for one per core"),
            ("workers", self.workers >= 1, "use >= 1"),
            ("max_message_bytes", self.max_message_bytes >= 1024, "use >= 1024"),
            ("grace_s", self.grace_s >= 0, "use >= 0 seconds"),
            ("torch_threads", self.torch_threads >= 0, "use >= 1, or 0 for auto"),
            ("batch_max", self.batch_max >= 0, "use >= 1, or 0 to compute on the workers without batching"),
            ("batch_wait_ms", 0 <= self.batch_wait_ms <= 100, "use 0..100 milliseconds"),
            ("parallel_min_mflop", self.parallel_min_mflop >= 0, "use >= 0 (0 = every call on torch_threads)"),
            ("metrics_port", 0 <= self.metrics_port <= 65535, "use 1..65535, or 0 to disable metrics"),
            ("cache_size", self.cache_size >= 0, "use >= 0 (0 disables the cache)"),
            ("cache_ttl", self.cache_ttl >= 0, "use >= 0 seconds"),
            ("state_cache", self.state_cache >= 0, "use >= 0 (0 disables the ranking-state cache)"),
            (
                "retrieval_blend",
                self.retrieval_blend == -1 or 0 <= self.retrieval_blend < float("inf"),
                "use -1 (the artifact's choice), 0 (the ranker alone) or a positive weight",
            ),
            ("max_concurrent", self.max_concurrent >= 1, "use >= 1"),
            ("reload_interval", self.reload_interval >= 0, "use >= 0 seconds (0 disables polling)"),
            ("log_level", self.log_level in LOG_LEVELS, f"use one of {', '.join(LOG_LEVELS)}"),
            ("log_format", self.log_format in LOG_FORMATS, f"use one of {', '.join(LOG_FORMATS)}"),
            ("scorer", self.scorer in SCORERS, f"use one of {', '.join(SCORERS)}"),
            ("precision", self.precision in PRECISIONS, f"use one of {', '.join(PRECISIONS)}"),
            ("tls_key", bool(self.tls_cert) == bool(self.tls_key), "pass both --tls-cert and --tls-key, or neither"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise InvalidArgument(f"server config: {name}={getattr(self, name)!r} is invalid; fix: {fix}")
        if any(not t or t != t.strip() or any(c.isspace() for c in t) for t in tokens):
            raise InvalidArgument("server config: a token is empty or contains whitespace; fix: use non-blank tokens")
        if self.require_read_token and not tokens:
            raise InvalidArgument(
                "server config: require_read_token=True but no tokens are configured; "
                "fix: pass --read-tokens and/or --write-tokens"
            )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.write_tokens or self.read_tokens)

    def __repr__(self) -> str:  # secrets masked, so a config in a log or a traceback leaks nothing
        return f"ServerConfig({', '.join(f'{k}={v!r}' for k, v in self.masked().items())})"

    def masked(self) -> dict[str, Any]:
        """The config as a JSON-ready dict that is safe to log: tokens as ***, store passwords masked."""
        out = dataclasses.asdict(self)
        out["features"] = mask_url(self.features)
        out["write_tokens"] = ["***"] * len(self.write_tokens)
        out["read_tokens"] = ["***"] * len(self.read_tokens)
        return out


FIELDS: dict[str, Any] = typing.get_type_hints(ServerConfig)  # name -> type, in declaration order


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    path: str | Path | None = None,
) -> ServerConfig:
    """The effective config: defaults < TOML file at `path` (else `env[RECSYS_CONFIG]`) < `RECSYS_*` in
    `env` < `flags` (already typed, e.g. from argparse). Raises `InvalidArgument` naming the bad key."""
    env = dict(env or {})
    values: dict[str, Any] = {}
    path = path or env.get(CONFIG_ENV) or None
    if path:
        values.update(read_toml(path))
    values.update(from_env(env))
    unknown = sorted(set(flags or {}) - set(FIELDS))
    if unknown:  # a programming error in a caller, not a user's typo
        raise InvalidArgument(f"flags: unknown keys {unknown}; valid keys: {', '.join(FIELDS)}")
    values.update(flags or {})
    return ServerConfig(**values)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The typed values of a flat TOML file; unknown keys and wrong types raise `InvalidArgument`."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as err:
        raise InvalidArgument(
            f"config file {path}: cannot be read ({err.strerror}); fix: pass an existing file"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument(f"config file {path}: not valid TOML ({err}); fix: correct the syntax") from None
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InvalidArgument(
            f"config file {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(FIELDS)}"
        )
    return {key: _from_toml(key, value, str(path)) for key, value in raw.items()}


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The typed values of the `RECSYS_<FIELD>` variables in `env` (`RECSYS_CONFIG` excluded)."""
    out: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in FIELDS:
            logger.warning("ignoring environment variable %s: not a server config field (%s)", name, ", ".join(FIELDS))
            continue
        out[key] = _from_text(key, text, f"environment variable {name}")
    return out


def _from_toml(key: str, value: Any, where: str) -> Any:
    kind = FIELDS[key]
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "tuple[str, ...]": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[_kind(kind)]
    if not ok:
        raise InvalidArgument(
            f"config file {where}: {key} = {value!r} is not {_describe(kind)}; fix: write {_describe(kind)}"
        )
    return tuple(value) if isinstance(value, list) else float(value) if _kind(kind) == "float" else value


def _from_text(key: str, text: str, where: str) -> Any:
    kind = _kind(FIELDS[key])
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                    "off": False}[text.strip().lower()]  # fmt: skip
        if kind == "tuple[str, ...]":
            return parse_list(text)
        return text
    except (ValueError, KeyError):
        raise InvalidArgument(
            f"{where}: {text!r} is not {_describe(FIELDS[key])}; fix: set {_describe(FIELDS[key])}"
        ) from None


def parse_list(text: str) -> tuple[str, ...]:
    """ "a, b,,c" -> ("a", "b", "c")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _kind(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")


def _describe(kind: Any) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean (true/false)",
        "tuple[str, ...]": "a list of strings (comma-separated in the environment)",
    }[_kind(kind)]
