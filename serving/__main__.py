"""`python -m serving [--config FILE.toml] [--artifact DIR] [--features URL] [--port P] ...`.

Every setting is a `serving.config.ServerConfig` field, taken from (lowest first) its default, the TOML
file (`--config`, or `RECSYS_CONFIG`), the environment (`RECSYS_<FIELD>`) and these flags.

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT); 2 for a bad argument, config key or store URL, 3
when the store or the port is unavailable, 4 for a bad artifact (`RecsysError.exit_code`), each with
one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from recsys.errors import InvalidArgument, RecsysError
from serving.config import LOG_FORMATS, LOG_LEVELS, PRECISIONS, SCORERS, ServerConfig, load_config, parse_list
from serving.logs import setup_logging
from serving.processes import effective_processes, supervise
from serving.server import serve

_DEFAULTS = ServerConfig(artifact="-")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Only the flags actually given end up in the namespace (the others come from file, env, defaults)."""
    d = _DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve recsys.v1.Recommender (gRPC). Precedence: flags > RECSYS_<FIELD> env > --config > defaults.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="TOML file of ServerConfig fields (or RECSYS_CONFIG)")
    p.add_argument("--artifact", help="model version dir, or an artifacts root with LATEST (then hot reload)")
    p.add_argument("--features", help=f"feature store: memory:// (seeded from the artifact) or redis://HOST:PORT/DB "
                   f"(default {d.features})")  # fmt: skip
    p.add_argument("--host", help=f"bind address, 0.0.0.0 in a container (default {d.host})")
    p.add_argument("--port", type=int, help=f"0 picks a free port (default {d.port})")
    p.add_argument(
        "--processes",
        type=int,
        help=f"server processes sharing the port, 0 = one per core (default {d.processes}; serving.processes)",
    )
    p.add_argument("--process-slot", help=argparse.SUPPRESS)  # "i/N": set by the supervisor for its children
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # the supervisor's pipe: "started"
    p.add_argument("--workers", type=int, help=f"threads handling requests (default {d.workers})")
    p.add_argument("--torch-threads", type=int, help=f"torch intra-op threads, 0 = auto (default {d.torch_threads})")
    p.add_argument(
        "--batch-max",
        type=int,
        help=f"Recommend calls batched on the model thread, 0 = no model thread (default {d.batch_max})",
    )
    p.add_argument("--batch-wait-ms", type=float, help=f"longest wait to gather a batch (default {d.batch_wait_ms})")
    p.add_argument(
        "--parallel-min-mflop",
        type=float,
        help=f"model calls ranking fewer MFLOP run on 1 thread, 0 = never (default {d.parallel_min_mflop})",
    )
    p.add_argument("--max-history", type=int, help=f"events kept per user (default {d.max_history})")
    p.add_argument("--max-message-bytes", type=int, help=f"default {d.max_message_bytes}")
    p.add_argument("--grace", dest="grace_s", type=float, help=f"seconds to drain on SIGTERM (default {d.grace_s})")
    p.add_argument("--metrics-port", type=int, help=f"Prometheus /metrics port; 0 disables (default {d.metrics_port})")
    p.add_argument("--cache-size", type=int, help=f"users in the state cache; 0 disables (default {d.cache_size})")
    p.add_argument("--cache-ttl", type=float, help=f"seconds a cached state is used (default {d.cache_ttl})")
    p.add_argument("--max-concurrent", type=int, help=f"requests admitted at once (default {d.max_concurrent})")
    p.add_argument("--reload-interval", type=float, help=f"seconds between LATEST polls; 0 = off (default "
                   f"{d.reload_interval})")  # fmt: skip
    p.add_argument("--write-tokens", type=parse_list, help="comma-separated bearer tokens for writes and Admin "
                   "(prefer RECSYS_WRITE_TOKENS or the config file: flags are visible in ps)")  # fmt: skip
    p.add_argument("--read-tokens", type=parse_list, help="comma-separated bearer tokens for reads")
    p.add_argument(
        "--require-read-token", action=argparse.BooleanOptionalAction, help="close reads to calls without a token"
    )
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: TLS only)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--log-level", choices=LOG_LEVELS, help=f"default {d.log_level}; DEBUG logs every request")
    p.add_argument("--log-format", choices=LOG_FORMATS, help=f"default {d.log_format}")
    p.add_argument("--scorer", choices=SCORERS, help=f"reference = the naive baseline (default {d.scorer})")
    p.add_argument("--precision", choices=PRECISIONS, help=f"ranker weights (default {d.precision})")
    p.add_argument(
        "--state-cache", type=int, help=f"users whose ranking state is kept, 0 = off (default {d.state_cache})"
    )
    p.add_argument(
        "--retrieval-blend",
        type=float,
        help="weight of retrieval's opinion in Recommend's order: -1 = the artifact's choice, 0 = the ranker alone "
        f"(default {d.retrieval_blend})",
    )
    return p.parse_args(argv)


def parse_slot(text: str | None) -> tuple[int, int] | None:
    """`--process-slot i/N` (the supervisor's child i of N) as (i, N)."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise InvalidArgument(f"--process-slot {text!r} is invalid; fix: leave it to the supervisor (--processes)")
    return i, n


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        flags = vars(parse_args(argv))
        path = flags.pop("config", None)
        slot = parse_slot(flags.pop("process_slot", None))
        ready_fd = flags.pop("ready_fd", None)
        config = load_config(flags, os.environ if env is None else env, path=path)
        setup_logging(config.log_level, config.log_format)
        if slot is None and effective_processes(config) > 1:
            return supervise(config, sys.argv[1:] if argv is None else list(argv))
        asyncio.run(serve(config, slot or (0, 1), ready_fd))
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C while loading, before the signal handlers exist
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
