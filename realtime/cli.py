"""``squall``: run a node, migrate its database, administer users."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Sequence

from protocol.errors import ApiError
from realtime import logs
from realtime.settings import Settings, SettingsError, load_settings
from realtime.storage.migrate import NotMigratedError, upgrade

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squall",
        description="Squall realtime backend. Settings come from SQUALL_* "
        "environment variables (see the README); options here override them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a node until SIGINT/SIGTERM")
    serve.add_argument("--host", help="address to listen on (SQUALL_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (SQUALL_PORT)")
    serve.add_argument("--node-id", help="name in logs and metrics (SQUALL_NODE_ID)")
    serve.add_argument("--data-dir", help="data directory (SQUALL_DATA_DIR)")
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="apply pending migrations before starting",
    )

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--data-dir", help="data directory (SQUALL_DATA_DIR)")
    migrate.add_argument(
        "--revision", default="head", help="target revision (default: head)"
    )

    user = sub.add_parser("user", help="administer users")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    create = user_sub.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument("--display-name")
    create.add_argument("--admin", action="store_true", help="mark as administrator")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of prompting",
    )
    create.add_argument("--data-dir", help="data directory (SQUALL_DATA_DIR)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key in ("host", "port", "node_id", "data_dir")
        if (value := getattr(args, key, None)) is not None
    }
    return load_settings(**overrides)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("squall: passwords differ")
    return first


async def _create_user(settings: Settings, args: argparse.Namespace) -> int:
    from protocol.accounts import RegisterParams
    from realtime.node import build_node

    password = _read_password(args.password_stdin)
    params = RegisterParams(
        username=args.username, password=password, display_name=args.display_name
    )
    node = await build_node(settings)
    try:
        user = await node.accounts.create_user(
            params.username,
            params.password,
            display_name=params.display_name,
            is_admin=args.admin,
        )
    finally:
        await node.close()
    print(f"created user {user.username} ({user.id})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        logs.configure(
            settings.log_level,
            json=settings.log_json,
            node_id=settings.effective_node_id,
        )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if args.command == "migrate":
            upgrade(settings.sqlalchemy_url, args.revision)
            print("database is at the latest revision")
            return 0
        if args.command == "serve":
            from realtime.server import serve

            if args.migrate:
                upgrade(settings.sqlalchemy_url)
            asyncio.run(serve(settings))
            return 0
        if args.command == "user" and args.user_command == "create":
            return asyncio.run(_create_user(settings, args))
    except (SettingsError, NotMigratedError) as exc:
        print(f"squall: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"squall: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
