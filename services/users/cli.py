"""The `portico` command line: operator tasks against the users service's database.

portico keys rotate
portico admin create-user --admin --email root@example.com --password-stdin
portico events replay-dlq portico.events.files [--limit 100]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence

import aio_pika

from libs.common.errors import PorticoError
from libs.common.events import Outbox
from libs.common.events.replay import replay_dead_letters
from libs.common.events.topology import connect
from libs.common.logging import configure_logging
from libs.common.mongo import connect_mongo
from libs.common.settings import load_settings
from services.users.app import build_keyring, build_passwords
from services.users.models import MODELS
from services.users.service import PasswordPolicy, RequestInfo
from services.users.service.auth import create_user
from services.users.settings import Settings

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portico", description="Portico operator commands")
    sub = parser.add_subparsers(dest="group", required=True)
    keys = sub.add_parser("keys", help="JWT signing keys").add_subparsers(
        dest="command", required=True
    )
    keys.add_parser("rotate", help="publish a new signing key (old ones keep verifying)")
    admin = sub.add_parser("admin", help="administration").add_subparsers(
        dest="command", required=True
    )
    create = admin.add_parser("create-user", help="create a user (e.g. the first admin)")
    create.add_argument("--email", required=True)
    create.add_argument("--display-name", default=None)
    create.add_argument("--admin", action="store_true", help="give the user the admin role")
    source = create.add_mutually_exclusive_group()
    source.add_argument("--password", help="the password (visible in the process list!)")
    source.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    events = sub.add_parser("events", help="the event bus").add_subparsers(
        dest="command", required=True
    )
    replay = events.add_parser(
        "replay-dlq", help="move a consumer queue's parked events back to it (after the fix)"
    )
    replay.add_argument("queue", help="the consumer queue, e.g. portico.events.files")
    replay.add_argument("--limit", type=int, default=None, help="at most this many")
    return parser


async def _replay(settings: Settings, queue: str, limit: int | None) -> int:
    connection = await connect(settings.rabbitmq_url, connection_name="portico-cli")
    try:
        return await replay_dead_letters(connection, queue, limit=limit)
    finally:
        await connection.close()


async def _rotate(settings: Settings) -> str:
    mongo = await connect_mongo(settings.mongodb_url, settings.mongodb_database, MODELS)
    try:
        keyring = build_keyring(settings)
        await keyring.ensure_key()
        return await keyring.rotate()
    finally:
        await mongo.client.close()


async def _create_user(
    settings: Settings, *, email: str, password: str, display_name: str | None, admin: bool
) -> str:
    mongo = await connect_mongo(settings.mongodb_url, settings.mongodb_database, MODELS)
    try:
        outbox = Outbox(mongo, settings.service_name)
        await outbox.ensure_indexes()
        user = await create_user(
            outbox=outbox,
            passwords=build_passwords(settings, None),
            policy=PasswordPolicy(
                min_length=settings.password_min_length, max_length=settings.password_max_length
            ),
            email=email,
            password=password,
            display_name=display_name or email.split("@")[0],
            info=RequestInfo(user_agent="portico-cli"),
            roles=("user", "admin") if admin else ("user",),
        )
        return str(user.id)
    finally:
        await mongo.client.close()


def run(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = _parser().parse_args(argv)
    settings = settings or load_settings(Settings)
    # Only problems go to the terminal; stdout is the command's answer.
    configure_logging(level="WARNING", json=False, service="portico-cli")
    try:
        if args.group == "events":
            try:
                moved = asyncio.run(_replay(settings, args.queue, args.limit))
            except aio_pika.exceptions.ChannelNotFoundEntity:
                print(f"error: no queue {args.queue} (or {args.queue}.dlq)", file=sys.stderr)  # noqa: T201
                return 1
            print(f"replayed {moved} event(s) from {args.queue}.dlq to {args.queue}")  # noqa: T201
            return 0
        if args.group == "keys":
            kid = asyncio.run(_rotate(settings))
            print(  # noqa: T201
                f"new signing key {kid} is published and signs in {settings.key_publish_seconds} s;"
                " older keys verify until their tokens expire"
            )
            return 0
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif args.password is not None:
            password = args.password
        else:
            password = getpass.getpass("password: ")
        user_id = asyncio.run(
            _create_user(
                settings,
                email=args.email,
                password=password,
                display_name=args.display_name,
                admin=args.admin,
            )
        )
    except PorticoError as exc:
        reasons = "; ".join(f"{e['field']} {e['message']}" for e in exc.errors or [])
        print(f"error: {exc.detail}{': ' + reasons if reasons else ''}", file=sys.stderr)  # noqa: T201
        return 1
    role = "admin" if args.admin else "user"
    print(f"created {role} {user_id}")  # noqa: T201
    return 0


def main() -> None:
    raise SystemExit(run())
