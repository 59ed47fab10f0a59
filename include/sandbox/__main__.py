"""Run the sandbox gateway: ``python -m sandbox --port 8900 [--app-secret S] [--error-5xx 0.1] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence

from sandbox.faults import FaultSettings
from sandbox.server import DEFAULT_HOST, DEFAULT_SERVICE_PATH, start_sandbox

_SHARE_FLAGS = {
    "error_5xx": "share of messages answered HTTP 500/502/503 without processing",
    "drop": "share of messages whose connection is closed before processing",
    "lost_reply": "share of applied writes whose reply is never sent",
    "business_error": "share of valid messages refused with 业务处理失败",
    "hang": "share of messages never answered until the server stops",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8900, help="port, 0 for any free one (default %(default)s)"
    )
    parser.add_argument("--catalog", help="interface catalog file (default: include/interfaces.json)")
    parser.add_argument("--app-id", help="app id signed requests must carry")
    parser.add_argument(
        "--app-secret",
        default=os.environ.get("SANDBOX_APP_SECRET"),
        help="HMAC secret; when set every message must be signed (default: $SANDBOX_APP_SECRET)",
    )
    parser.add_argument("--service-path", default=DEFAULT_SERVICE_PATH, help="path messages are posted to")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="mean delay before each answer")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +/- spread of the delay")
    for name, text in _SHARE_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, help=f"{text} (0-1)")
    parser.add_argument(
        "--rate-limit", type=int, default=0, help="messages per second per institution, 0 = none"
    )
    parser.add_argument("--seed", type=int, default=FaultSettings.seed, help="seed of the fault draws")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    faults = {
        name: getattr(args, name) for name in ("latency_ms", "jitter_ms", *_SHARE_FLAGS, "rate_limit", "seed")
    }
    try:
        server = start_sandbox(
            args.port,
            host=args.host,
            catalog=args.catalog,
            app_id=args.app_id,
            app_secret=args.app_secret,
            service_path=args.service_path,
            **faults,
        )
    except (OSError, ValueError) as err:
        logging.getLogger(__name__).error("Cannot start the sandbox gateway: %s", err)
        return 1

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
