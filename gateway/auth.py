"""Edge authentication: EdDSA access tokens verified locally against the users JWKS, revocation
checked in Redis (one MGET) and kept current by the revocation feed, API keys resolved through
the users service, scopes per route.

The hot path for a token seen before is a dict lookup, an `exp` comparison, two denylist lookups
and one MGET: the verified claims and the signed `X-Portico-Identity` value are cached per token
until it expires. With `trust_feed` (setting `revocation_check=feed`), a token's Redis check holds
for the feed's subscription epoch (at most a minute) and the MGET goes too — see
`gateway.revocation` for what that trades.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
import jwt
import orjson
import structlog
from prometheus_client import Counter

from gateway.resp import bulk
from gateway.revocation import MGetClient, RevocationKeys, mget_command
from gateway.routing import Route
from gateway.upstreams import Upstream
from libs.common.errors import Forbidden, Unauthenticated, UpstreamUnavailable
from libs.common.identity import IDENTITY_HEADER, Principal, sign_identity

__all__ = ["AUTH_FAILURES", "Authenticator", "Jwks", "Verified"]

_log = structlog.get_logger("portico.gateway.auth")

AUTH_FAILURES = Counter(
    "gateway_auth_failures_total", "Requests refused at the gateway's edge auth", ["reason"]
)
_REASONS = (
    "missing", "malformed", "bad_algorithm", "unknown_kid", "bad_signature", "expired",
    "not_yet_valid", "wrong_issuer", "wrong_audience", "revoked", "invalid_api_key",
    "insufficient_scope", "api_key_not_allowed",
)  # fmt: skip
_FAILURE = {reason: AUTH_FAILURES.labels(reason) for reason in _REASONS}
for _counter in _FAILURE.values():
    _counter.inc(0)

_MAX_TOKEN = 8192
_MAX_API_KEY = 256
_NEGATIVE_KEY_SECONDS = 5.0
_NOT_BEFORE = re.compile(rb"[0-9]{1,15}")
# How long a token's Redis check holds while the feed is live: a bound on what a message lost
# without the connection noticing could cost, at one MGET per token per interval.
_RECHECK_SECONDS = 60.0
_SERVICE = Principal(id="gateway", kind="service", roles=("service",))


def _remember(table: dict[str, Any], key: str, value: Any, size: int) -> None:
    """Put `key` in a table bounded to `size` entries: the oldest goes first (dicts keep
    insertion order), so keys a client makes up cannot grow the gateway's memory."""
    table.pop(key, None)
    if len(table) >= size:
        del table[next(iter(table))]
    table[key] = value


def _fail(reason: str, detail: str = "invalid credentials") -> Unauthenticated:
    _FAILURE[reason].inc()
    return Unauthenticated(detail)


@dataclass(slots=True)
class Verified:
    """A verified credential: who it is, until when, and the identity header to forward."""

    principal: Principal
    expires: float
    identity: str
    resign_at: float
    keys: tuple[bytes, ...] = ()  # revocation keys in Redis (tokens only)
    iat: int = 0
    command: bytes = b""  # the MGET of `keys`, serialised once per token
    checked_epoch: int = 0  # the feed's epoch of the token's last clean Redis check
    checked_until: float = 0.0  # ... which holds until then
    limiter_keys: RevocationKeys | None = None  # `keys` as the rate-limit script takes them


class Jwks:
    """The users service's signing keys, fetched on start, refreshed on an unknown kid (rate
    limited, single-flight) and in the background when older than `ttl`."""

    def __init__(self, users: Upstream, *, min_refresh: float, ttl: float) -> None:
        self.users = users
        self.min_refresh = min_refresh
        self.ttl = ttl
        self.keys: dict[str, Any] = {}
        self.fetched_at = 0.0
        self.attempted_at = -1e9
        self._inflight: asyncio.Task[None] | None = None

    async def _fetch(self) -> None:
        self.attempted_at = time.monotonic()
        instance = self.users.pick()
        if instance is None or self.users.session is None:
            self._failed()
            return
        try:
            async with self.users.session.get(
                f"{instance.base}/.well-known/jwks.json", timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                if response.status != 200:
                    _log.warning("jwks fetch failed", status=response.status)
                    self._failed()
                    return
                document = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            _log.warning("jwks fetch failed", error=type(exc).__name__)
            self._failed()
            return
        keys: dict[str, Any] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            # Only Ed25519 keys: the algorithm is pinned, never chosen by the token.
            if not isinstance(entry, dict) or entry.get("kty") != "OKP":
                continue
            if entry.get("crv") != "Ed25519" or not entry.get("kid"):
                continue
            try:
                keys[str(entry["kid"])] = jwt.PyJWK(entry, algorithm="EdDSA").key
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                _log.warning("unusable jwk", kid=entry.get("kid"))
        self.keys = keys
        self.fetched_at = time.monotonic()

    def _failed(self) -> None:
        # A failed fetch (users starting later than the gateway, say) may be retried after a
        # short pause, not after the full `min_refresh` meant for unknown-kid floods.
        self.attempted_at = time.monotonic() - self.min_refresh + min(self.min_refresh, 1.0)

    async def refresh(self) -> None:
        """Fetch now, sharing one in-flight fetch between concurrent callers."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch())
        await asyncio.shield(self._inflight)

    async def key(self, kid: str) -> Any:
        key = self.keys.get(kid)
        now = time.monotonic()
        if key is not None:
            if now - self.fetched_at > self.ttl and now - self.attempted_at > self.min_refresh:
                self.attempted_at = now
                self._inflight = asyncio.create_task(self._fetch())
            return key
        if not self.keys or now - self.attempted_at >= self.min_refresh:
            # With no keys at all (users was not up when we started) every token is unknown:
            # fetch now rather than refuse everyone until the rate limit allows.
            await self.refresh()
        elif self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
        return self.keys.get(kid)


class RevocationCheck:
    """A token's revocation check, sent to Redis (or held back for the rate limiter's script to
    make: `limiter_keys`) and judged when awaited (it raises for a revoked token). Not awaited,
    it must be discarded: the reply is dropped, nothing leaks."""

    __slots__ = ("auth", "epoch", "reply", "token", "verified")

    def __init__(self, auth: Authenticator, token: str, verified: Verified,
                 reply: asyncio.Future[list[bytes | None]] | None, epoch: int) -> None:  # fmt: skip
        self.auth = auth
        self.token = token
        self.verified = verified
        self.reply = reply
        self.epoch = epoch

    def __await__(self) -> Generator[Any, None, None]:
        if self.reply is None:  # held back, and the limiter could not make it after all
            self.reply = self.auth._send_mget(self.verified)
        judged = self.auth._judge_revocation(self.token, self.verified, self.reply, self.epoch)
        return judged.__await__()

    def limiter_keys(self) -> RevocationKeys:
        """The token's keys for the rate-limit script (which judges it in its own call)."""
        verified = self.verified
        if verified.limiter_keys is None:
            verified.limiter_keys = RevocationKeys(
                b"".join(bulk(key) for key in verified.keys), len(verified.keys),
                bulk(b"%d" % verified.iat),
            )  # fmt: skip
        return verified.limiter_keys

    def refuse(self) -> NoReturn:
        """The rate-limit script found the token revoked."""
        self.auth._refuse(self.token)

    def discard(self) -> None:
        if self.reply is None:
            return
        if self.reply.done():
            if not self.reply.cancelled():
                self.reply.exception()  # retrieved: no "never retrieved" log
        else:
            self.reply.cancel()


class Authenticator:
    """Turns a request's credentials into a `Verified` principal for a route."""

    def __init__(
        self,
        *,
        users: Upstream,
        jwks: Jwks,
        revocations: MGetClient,
        secret: str,
        prefix: str,
        issuer: str,
        audience: str,
        leeway: int,
        cache_size: int,
        apikey_seconds: float,
        identity_ttl: int,
        fail_open: bool,
        trust_feed: bool = False,
    ) -> None:
        self.users = users
        self.jwks = jwks
        self.revocations = revocations
        self.secret = secret
        self.prefix = prefix
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.cache_size = cache_size
        self.apikey_seconds = apikey_seconds
        self.identity_ttl = identity_ttl
        self.fail_open = fail_open
        self.trust_feed = trust_feed
        self.tokens: dict[str, Verified] = {}
        self.api_keys: dict[str, Verified | float] = {}  # float: "unknown key" until then
        self._resolving: dict[str, asyncio.Future[Verified | None]] = {}
        self.revoked_jti: dict[str, float] = {}
        self.revoked_sid: dict[str, float] = {}
        # The revocation feed's subscription epoch (`RevocationListener`); 0: no live feed. Read
        # only with `trust_feed`: a token checked in Redis in this epoch is then not rechecked.
        self.revocation_epoch = 0
        self._service_identity = ("", 0.0)

    # -- identity -------------------------------------------------------------------------

    def _sign(self, principal: Principal) -> tuple[str, float]:
        value = sign_identity(principal, self.secret, ttl=self.identity_ttl)
        return value, time.time() + self.identity_ttl / 2

    def service_identity(self) -> str:
        """The identity the gateway itself presents to services (kind="service")."""
        value, resign_at = self._service_identity
        if time.time() >= resign_at:
            self._service_identity = self._sign(_SERVICE)
            value = self._service_identity[0]
        return value

    def identity_of(self, verified: Verified) -> str:
        if time.time() >= verified.resign_at:
            verified.identity, verified.resign_at = self._sign(verified.principal)
        return verified.identity

    # -- entry point ----------------------------------------------------------------------

    async def authenticate(self, headers: Any, route: Route) -> Verified | None:
        """The verified caller, None for an anonymous one where the route allows it."""
        verified, check = await self.authenticate_begin(headers, route)
        if check is not None:
            await check
        return verified

    async def authenticate_begin(
        self, headers: Any, route: Route, *, hold: bool = False
    ) -> tuple[Verified | None, RevocationCheck | None]:
        """`authenticate`, with the token's revocation check sent to Redis but not awaited: the
        caller may queue its own Redis commands (rate limit, cache lookup) to leave in the same
        write, and must await the check (it raises for a revoked token) before it answers or
        forwards anything for this caller. `hold`: not even sent, for the rate limiter to make
        in its own script call (`RevocationCheck.limiter_keys`)."""
        authorization = headers.get("Authorization")
        check: RevocationCheck | None = None
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN:
                raise _fail("malformed", "expected 'Authorization: Bearer <token>'")
            token = token.strip()
            verified = await self._token(token)
            check = self._revocation_check(token, verified, hold=hold)
        else:
            key = headers.get("X-API-Key")
            if key is None:
                if route.auth == "required":
                    raise _fail("missing", "authentication is required")
                return None, None
            verified = await self._api_key(key)
        principal = verified.principal
        if principal.kind == "api_key":
            if not route.api_keys:
                _FAILURE["api_key_not_allowed"].inc()
                raise Forbidden("API keys cannot be used on this route")
            for scope in route.scopes:
                if scope not in principal.scopes:
                    _FAILURE["insufficient_scope"].inc()
                    raise Forbidden(f"the API key lacks the scope {scope!r}")
        return verified, check

    # -- tokens ---------------------------------------------------------------------------

    async def _token(self, token: str) -> Verified:
        verified = self.tokens.get(token)
        now = time.time()
        if verified is None or verified.expires <= now:
            if verified is not None:
                del self.tokens[token]
                raise _fail("expired", "the access token has expired")
            verified = await self._verify(token)
            _remember(self.tokens, token, verified, self.cache_size)
        return verified

    def _refuse(self, token: str) -> NoReturn:
        """A revoked token: forgotten, and refused."""
        self.tokens.pop(token, None)
        raise _fail("revoked", "the access token has been revoked")

    async def _verify(self, token: str) -> Verified:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:  # DecodeError, or a header PyJWT refuses (non-string kid)
            raise _fail("malformed") from None
        if header.get("alg") != "EdDSA":
            raise _fail("bad_algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _fail("unknown_kid")
        key = await self.jwks.key(kid)
        if key is None:
            raise _fail("unknown_kid")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise _fail("expired", "the access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _fail("not_yet_valid") from None
        except jwt.InvalidIssuerError:
            raise _fail("wrong_issuer") from None
        except jwt.InvalidAudienceError:
            raise _fail("wrong_audience") from None
        except jwt.InvalidAlgorithmError:
            raise _fail("bad_algorithm") from None
        except jwt.InvalidSignatureError:
            raise _fail("bad_signature") from None
        except jwt.InvalidTokenError:
            raise _fail("malformed") from None
        roles = claims.get("roles", ["user"])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise _fail("malformed")
        sub, jti, sid = str(claims["sub"]), str(claims["jti"]), claims.get("sid")
        exp = int(claims["exp"])
        principal = Principal(
            id=sub,
            kind="user",
            roles=tuple(roles),
            session_id=str(sid) if sid is not None else None,
            token_id=jti,
            token_exp=exp,
        )
        identity, resign_at = self._sign(principal)
        p = self.prefix
        keys = [f"{p}revoked:jti:{jti}".encode(), f"{p}user:{sub}:not_before".encode()]
        if sid is not None:
            keys.append(f"{p}revoked:sid:{sid}".encode())
        return Verified(principal, exp + self.leeway, identity, resign_at, tuple(keys),
                        int(claims["iat"]), mget_command(keys))  # fmt: skip

    def _revocation_check(
        self, token: str, verified: Verified, *, hold: bool = False
    ) -> RevocationCheck | None:
        """Refuse a token on a local deny-list at once; pass it when its Redis check holds for
        the live feed's epoch; else send its MGET now and return what judges the reply."""
        principal = verified.principal
        if principal.token_id in self.revoked_jti or principal.session_id in self.revoked_sid:
            self._refuse(token)
        epoch = self.revocation_epoch if self.trust_feed else 0
        if epoch and verified.checked_epoch == epoch and time.monotonic() < verified.checked_until:
            return None
        reply = None if hold else self._send_mget(verified)
        return RevocationCheck(self, token, verified, reply, epoch)

    def _send_mget(self, verified: Verified) -> asyncio.Future[list[bytes | None]]:
        reply: asyncio.Future[list[bytes | None]]
        try:
            sent = self.revocations.mget(verified.keys, command=verified.command)
            # A future in any case (a Task while (re)connecting), so `discard` can cancel it;
            # connected, it is one already (ensure_future's checks cost ~1 µs a request).
            reply = sent if isinstance(sent, asyncio.Future) else asyncio.ensure_future(sent)
        except (ConnectionError, OSError) as exc:  # judged like a failed reply
            reply = asyncio.get_running_loop().create_future()
            reply.set_exception(exc)
        return reply

    async def _judge_revocation(
        self, token: str, verified: Verified, reply: Awaitable[list[bytes | None]], epoch: int
    ) -> None:
        try:
            values = await reply
        except (ConnectionError, OSError, TimeoutError) as exc:
            if self.fail_open:
                _log.warning("revocation check skipped: redis unavailable", error=str(exc))
                return
            raise UpstreamUnavailable("authentication is temporarily unavailable") from None
        revoked = values[0] is not None or (len(values) > 2 and values[2] is not None)
        not_before = values[1]
        if not revoked and not_before is not None:
            # Whole unix seconds, as the users service writes them; anything else (a float, "nan",
            # "inf", hex) is unreadable, and unreadable means we cannot prove the token is still
            # good. The rate-limit script reads the value with the same grammar.
            revoked = _NOT_BEFORE.fullmatch(not_before) is None or verified.iat < int(not_before)
        if revoked:
            self._refuse(token)
        if epoch and epoch == self.revocation_epoch:
            # Sent after the subscription was confirmed: anything revoked since Redis answered
            # reaches the feed, which refuses the token before its next request is looked at.
            verified.checked_epoch = epoch
            verified.checked_until = time.monotonic() + _RECHECK_SECONDS

    # -- API keys -------------------------------------------------------------------------

    async def _api_key(self, key: str) -> Verified:
        if not key.startswith("pk_") or len(key) > _MAX_API_KEY:
            raise _fail("invalid_api_key", "invalid API key")
        cached = self.api_keys.get(key)
        now = time.time()
        if isinstance(cached, Verified) and cached.expires > now:
            return cached
        if isinstance(cached, float) and cached > now:
            raise _fail("invalid_api_key", "invalid API key")
        future = self._resolving.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._resolving[key] = future
            try:
                result = await self._resolve(key)
                future.set_result(result)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                future.set_exception(exc)
                future.exception()  # retrieved here; concurrent waiters re-raise it themselves
                raise
            finally:
                del self._resolving[key]
        else:
            result = await asyncio.shield(future)
        if result is None:
            raise _fail("invalid_api_key", "invalid API key")
        return result

    async def _resolve(self, key: str) -> Verified | None:
        instance = self.users.pick()
        if instance is None or self.users.session is None or not self.users.breaker.allow():
            raise UpstreamUnavailable("authentication is temporarily unavailable")
        try:
            async with self.users.session.post(
                f"{instance.base}/internal/v1/api-keys/resolve",
                data=orjson.dumps({"key": key}),
                headers={
                    IDENTITY_HEADER: self.service_identity(),
                    "Content-Type": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=3),
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            self.users.failed(instance)
            raise UpstreamUnavailable("authentication is temporarily unavailable") from None
        self.users.succeeded(instance)
        now = time.time()
        if status == 404:
            # Bounded like the positive entries: random `pk_...` values must not grow the table.
            _remember(self.api_keys, key, now + min(_NEGATIVE_KEY_SECONDS, self.apikey_seconds),
                      self.cache_size)  # fmt: skip
            return None
        if status != 200:
            _log.warning("api key resolve failed", status=status)
            raise UpstreamUnavailable("authentication is temporarily unavailable")
        try:
            data = orjson.loads(body)
            principal = Principal(
                id=str(data["user_id"]),
                kind="api_key",
                roles=tuple(str(r) for r in data.get("roles", ["user"])),
                scopes=tuple(str(s) for s in data.get("scopes", [])),
                tier=str(data.get("tier") or "free"),
                key_id=str(data["key_id"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            _log.warning("api key resolve answered garbage")
            raise UpstreamUnavailable("authentication is temporarily unavailable") from None
        identity, resign_at = self._sign(principal)
        verified = Verified(principal, now + self.apikey_seconds, identity, resign_at)
        _remember(self.api_keys, key, verified, self.cache_size)
        return verified

    # -- invalidation (revocation channel) ------------------------------------------------

    def on_revocation_epoch(self, epoch: int) -> None:
        self.revocation_epoch = epoch

    def on_revocation(self, kind: str, value: str) -> None:
        """Apply a `portico:revocations` message to the in-process caches."""
        horizon = time.time() + 3600
        if kind == "jti":
            self.revoked_jti[value] = horizon
        elif kind == "sid":
            self.revoked_sid[value] = horizon
        if kind in ("user", "*"):
            for token, verified in list(self.tokens.items()):
                if kind == "*" or verified.principal.id == value:
                    del self.tokens[token]
        if kind in ("apikey", "user", "*"):
            # The value may be a key id or a user id; keys are cheap to re-resolve, drop them all.
            self.api_keys.clear()
        self._expire_denylists()

    def _expire_denylists(self) -> None:
        now = time.time()
        for table in (self.revoked_jti, self.revoked_sid):
            if len(table) > 10_000:
                for name, until in list(table.items()):
                    if until < now:
                        del table[name]
