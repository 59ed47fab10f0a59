"""Administrative commands of the status store: ``python -m medins.admin init-store``."""

from __future__ import annotations

import argparse
import logging

from medins.store import StatusStore


def main(argv: list[str] | None = None) -> None:
    """Run an administrative command."""
    parser = argparse.ArgumentParser(prog="python -m medins.admin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init-store", help="create the async_task_status table (idempotent)")
    init.add_argument("--conn-id", default=StatusStore.default_conn_name)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "init-store":
        with StatusStore.from_conn_id(args.conn_id) as store:
            store.create_schema()
        logging.getLogger(__name__).info("Status table ready (Connection %s)", args.conn_id)


if __name__ == "__main__":
    main()
