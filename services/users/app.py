"""App factory of the users service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
from aiohttp import web

from libs.common.app import create_service_app
from libs.common.events.wiring import OUTBOX, events_ctx
from libs.common.mongo import mongo_ctx
from libs.common.redis import REDIS, redis_ctx
from services.users.events import consumers
from services.users.keys import (
    ACCOUNTS,
    API_KEYS,
    AUTH,
    CREDENTIALS,
    KEYRING,
    OPENAPI,
    SESSIONS,
    SETTINGS,
)
from services.users.models import MODELS
from services.users.openapi import openapi_document
from services.users.routes import routes
from services.users.service import (
    Accounts,
    ApiKeys,
    Audit,
    AuthService,
    Credentials,
    KeyRing,
    LoginGuard,
    PasswordPolicy,
    Passwords,
    Revocations,
    Sessions,
    TokenSettings,
    derive_kek,
)
from services.users.settings import Settings


def build_keyring(settings: Settings) -> KeyRing:
    """The signing-key store (also used by the CLI)."""
    return KeyRing(
        kek=derive_kek(settings.key_encryption_key.get_secret_value()),
        verify_seconds=settings.access_token_seconds + settings.key_retire_grace_seconds,
        publish_seconds=settings.key_publish_seconds,
        reload_seconds=settings.signing_key_reload_seconds,
    )


def build_passwords(settings: Settings, executor: ThreadPoolExecutor | None) -> Passwords:
    return Passwords(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        executor=executor,
    )


def _users_ctx(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the argon2 executor, the signing key (created on first start), the services."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # argon2 is CPU-bound and releases the GIL: a small pool bounds its memory use too.
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="argon2")
        try:
            outbox, redis = app[OUTBOX], app[REDIS]
            keyring = build_keyring(settings)
            await keyring.ensure_key()
            passwords = build_passwords(settings, executor)
            revocations = Revocations(
                redis, prefix=settings.redis_prefix, access_seconds=settings.access_token_seconds
            )
            audit = Audit()
            policy = PasswordPolicy(
                min_length=settings.password_min_length, max_length=settings.password_max_length
            )
            guard = LoginGuard(
                redis,
                prefix=settings.redis_prefix,
                ip_max_attempts=settings.login_ip_max_attempts,
                ip_window=settings.login_ip_window_seconds,
                threshold=settings.lockout_threshold,
                base_seconds=settings.lockout_base_seconds,
                max_seconds=settings.lockout_max_seconds,
            )
            app[KEYRING] = keyring
            app[AUTH] = AuthService(
                outbox=outbox,
                passwords=passwords,
                policy=policy,
                keys=keyring,
                revocations=revocations,
                guard=guard,
                audit=audit,
                tokens=TokenSettings(
                    issuer=settings.jwt_issuer,
                    audience=settings.jwt_audience,
                    access_seconds=settings.access_token_seconds,
                    refresh_seconds=settings.refresh_token_seconds,
                ),
            )
            app[SESSIONS] = Sessions(outbox=outbox, revocations=revocations)
            app[CREDENTIALS] = Credentials(
                outbox=outbox,
                passwords=passwords,
                policy=policy,
                revocations=revocations,
                guard=guard,
                audit=audit,
                reset_seconds=settings.password_reset_seconds,
            )
            app[ACCOUNTS] = Accounts(outbox=outbox, revocations=revocations, audit=audit)
            app[API_KEYS] = ApiKeys(outbox=outbox, revocations=revocations, audit=audit)
            yield
            # Reset requests answered 202 but still in flight finish (bounded) before Mongo closes.
            await app[CREDENTIALS].drain()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    return ctx


def create_app(settings: Settings) -> web.Application:
    app = create_service_app(settings)
    app[SETTINGS] = settings
    app[OPENAPI] = orjson.dumps(openapi_document())
    # Order matters: the outbox needs Mongo, the services need the outbox and Redis.
    app.cleanup_ctx.append(mongo_ctx(settings.mongodb_url, settings.mongodb_database, MODELS))
    app.cleanup_ctx.append(redis_ctx(settings.redis_url))
    app.cleanup_ctx.append(events_ctx(settings, source="users", consumers=consumers))
    app.cleanup_ctx.append(_users_ctx(settings))
    app.add_routes(routes)
    return app
