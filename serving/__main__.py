"""`python -m serving --artifact DIR [--features memory://|redis://HOST:PORT/DB] [--host H] [--port P]`.

Exit codes: 0 after a graceful stop (SIGTERM/SIGINT); 2 for a bad argument or store URL, 3 when the
store or the port is unavailable, 4 for a bad artifact (`RecsysError.exit_code`), each with one line
on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from recsys.errors import RecsysError
from serving.server import ServerConfig, serve

_DEFAULTS = ServerConfig(artifact="-")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving", description="Serve recsys.v1.Recommender (gRPC).")
    p.add_argument("--artifact", required=True, help="model version dir, or an artifacts root with LATEST")
    p.add_argument(
        "--features",
        default=_DEFAULTS.features,
        help="feature store: memory:// (seeded from the artifact) or redis://HOST:PORT/DB",
    )
    p.add_argument("--host", default=_DEFAULTS.host, help="bind address (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=_DEFAULTS.port, help="0 picks a free port")
    p.add_argument("--workers", type=int, default=_DEFAULTS.workers, help="threads running model/store calls")
    p.add_argument("--torch-threads", type=int, default=_DEFAULTS.torch_threads, help="intra-op threads per torch call")
    p.add_argument("--max-history", type=int, default=_DEFAULTS.max_history, help="events kept per user")
    p.add_argument("--max-message-bytes", type=int, default=_DEFAULTS.max_message_bytes)
    p.add_argument("--grace", type=float, default=_DEFAULTS.grace_s, help="seconds to drain on SIGTERM")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServerConfig(
            artifact=args.artifact,
            features=args.features,
            host=args.host,
            port=args.port,
            max_history=args.max_history,
            workers=args.workers,
            max_message_bytes=args.max_message_bytes,
            grace_s=args.grace,
            torch_threads=args.torch_threads,
        )
        asyncio.run(serve(config))
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C while loading, before the signal handlers exist
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
