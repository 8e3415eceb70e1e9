"""The soak's client side: an open-loop, fixed-rate mix of real API calls through the gateway.

Every operation has its own steady rate (`MIX`, scaled so the whole mix offers `rate` requests
per second); a scheduler launches each operation when it is due, whether or not earlier ones have
answered (open loop: a slow platform shows as latency and backlog, not as a politely lower rate).
Each HTTP call is recorded in the current window: status, latency, and whether it was expected.
429s are counted apart from errors; the anonymous operation is meant to earn them.

Per-IP limits (anonymous 5/s, `login` 10/min, the users service's own 30/min) are real here, so
logins rotate over a pool of loopback source addresses (127.0.<n>.<m>) and the anonymous client
has one address of its own, as the attack suite does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.soak.record import Recorder

PASSWORD = "soak passphrase for a long run 42"  # noqa: S105 - a throwaway stack's test users
ACCOUNTS = 40
API_KEYS_MIN = 8
FREE_TIER_DAILY = 10_000  # an API key's daily quota (free tier): spread the key traffic wider
LOGIN_ADDRESSES = 32
ANON_ADDRESS = "127.0.99.1"
# Events reach the files service's membership view asynchronously: an org (or a membership) is
# used for org files only once it is this old, so a 404 there is a real lag, not the test racing.
SETTLE_SECONDS = 10.0
OWNED_ORGS_MAX = 3  # past this, an owner's oldest org is deleted (keeps data bounded)
FILES_MAX = 150  # past this, the oldest file is deleted
MAX_INFLIGHT = 400
REQUEST_TIMEOUT = 30.0

# operation -> (operations per second at the reference mix, HTTP requests per operation).
MIX: dict[str, tuple[float, float]] = {
    "me_get": (70, 1),  # bearer GET /users/me (cached per user)
    "me_patch": (5, 2),  # PATCH /users/me, then GET it back (event -> cache purge)
    "apikey_get": (20, 1),  # X-API-Key GET /users/me or /orgs
    "orgs_list": (8, 1),
    "org_get": (8, 1),  # cached
    "members_list": (12, 1),  # cached, purged by membership events
    "org_create": (0.5, 1.5),  # + deleting the owner's oldest org now and then
    "invite_accept": (1, 2),  # owner invites, invitee accepts
    "file_upload": (3, 2),  # + deleting the oldest file once the pool is full
    "file_download": (10, 1),
    "file_meta": (5, 1),  # cached
    "login": (2, 1),
    "anon": (10, 1),  # GET /.well-known/jwks.json from one address: earns 429s
}
REFERENCE_RPS = sum(ops * reqs for ops, reqs in MIX.values())


@dataclass(eq=False)
class Account:
    id: str
    email: str
    token: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    renames: int = 0
    owned: list[Org] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(eq=False)
class Org:
    id: str
    owner: Account
    created: float
    # account id -> (account, monotonic time it joined)
    members: dict[str, tuple[Account, float]] = field(default_factory=dict)
    retired: bool = False

    def settled_members(self, now: float) -> list[Account]:
        return [a for a, joined in self.members.values() if now - joined >= SETTLE_SECONDS]


@dataclass(eq=False)
class StoredFile:
    id: str
    owner: Account
    org: Org | None
    body: bytes


class Traffic:
    """The accounts, orgs, files and keys of one soak, and the operations that use them."""

    def __init__(self, gateway: str, *, rate: float, seed: int = 11) -> None:
        self.gateway = gateway
        self.rate = rate
        self.scale = rate / REFERENCE_RPS
        self.random = random.Random(seed)
        self.recorder = Recorder()
        self.accounts: list[Account] = []
        self.orgs: list[Org] = []
        self.files: deque[StoredFile] = deque()
        self.api_keys: list[str] = []
        self.inflight: set[asyncio.Task[None]] = set()
        self.launched: Counter[str] = Counter()
        self.skipped = 0  # due but not sent: MAX_INFLIGHT calls were already waiting
        self.setup_retries = 0  # set-up calls answered 5xx (or not at all) and tried again
        self._login_turn = 0
        self._sessions: list[aiohttp.ClientSession] = []
        self.http: aiohttp.ClientSession
        self.logins: list[aiohttp.ClientSession] = []
        self.anon: aiohttp.ClientSession

    @property
    def offered_rps(self) -> float:
        return self.rate

    # -- sessions ---------------------------------------------------------------------------

    def _session(self, local: str | None = None) -> aiohttp.ClientSession:
        # No connection cap (limit=0): an open-loop client must not queue its own requests
        # (MAX_INFLIGHT bounds them); a cap here would show up as latency and timeouts.
        connector = aiohttp.TCPConnector(
            limit=0, local_addr=(local, 0) if local else None, enable_cleanup_closed=True
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        self._sessions.append(session)
        return session

    async def open(self) -> None:
        self.http = self._session()
        base = os.getpid() % 50  # another soak on this box gets other addresses
        self.logins = [self._session(f"127.0.{100 + base}.{n + 1}") for n in range(LOGIN_ADDRESSES)]
        self.anon = self._session(ANON_ADDRESS)

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()

    def _login_session(self) -> aiohttp.ClientSession:
        self._login_turn = (self._login_turn + 1) % len(self.logins)
        return self.logins[self._login_turn]

    # -- one HTTP call ----------------------------------------------------------------------

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...],
        session: aiohttp.ClientSession | None = None,
        gone: Callable[[], bool] | None = None,
        seen: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int | None, bytes]:
        """One request, recorded. `gone()` true makes 404/410 expected (resource retired);
        `seen` receives the response's cache headers."""
        started = time.monotonic()
        try:
            async with (session or self.http).request(
                method, self.gateway + path, **kwargs
            ) as resp:
                body = await resp.read()
                status = resp.status
                if seen is not None:
                    for name in ("X-Cache-Status", "Age", "ETag", "X-Request-ID"):
                        seen[name] = resp.headers.get(name, "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            note = type(exc).__name__
            self.recorder.record(kind, None, time.monotonic() - started, ok=False, note=note)
            return None, b""
        ok = status in expect or (status in (404, 410) and gone is not None and gone())
        note = "" if ok else body[:300].decode(errors="replace")
        self.recorder.record(kind, status, time.monotonic() - started, ok=ok, note=note)
        return status, body

    # -- set-up -----------------------------------------------------------------------------

    async def setup(self, seconds: float) -> None:
        """Accounts (registered and signed in), a first org for half of them, API keys (enough
        that none spends half its daily quota in `seconds`)."""
        semaphore = asyncio.Semaphore(4)  # argon2 costs CPU: a few at a time

        async def make(n: int) -> Account:
            async with semaphore:
                email = f"soak-{n}-{uuid.uuid4().hex[:8]}@example.com"
                body = {"email": email, "password": PASSWORD, "display_name": f"Soak {n}"}
                session = self._login_session()
                # 409 on a retry: the failed-looking attempt had committed after all.
                await self._setup("POST", "/api/v1/auth/register", json=body, expect=(201,),
                                  session=session, retry_ok=(409,))  # fmt: skip
                _, raw = await self._setup(
                    "POST", "/api/v1/auth/login", json={"email": email, "password": PASSWORD},
                    expect=(200,), session=session,
                )  # fmt: skip
                token = str(orjson.loads(raw)["access_token"])
                auth = {"Authorization": f"Bearer {token}"}
                _, raw = await self._setup("GET", "/api/v1/users/me", headers=auth, expect=(200,))
                return Account(id=orjson.loads(raw)["id"], email=email, token=token)

        self.accounts = list(await asyncio.gather(*(make(n) for n in range(ACCOUNTS))))
        for account in self.accounts[: ACCOUNTS // 2]:
            slug = f"soak-{uuid.uuid4().hex[:12]}"
            _, raw = await self._setup(
                "POST", "/api/v1/orgs", headers=account.auth, expect=(201,),
                json={"name": f"Soak org {slug[-4:]}", "slug": slug},
            )  # fmt: skip
            org = Org(id=orjson.loads(raw)["id"], owner=account, created=time.monotonic())
            account.owned.append(org)
            self.orgs.append(org)
        key_calls = MIX["apikey_get"][0] * self.scale * seconds
        keys = max(API_KEYS_MIN, math.ceil(key_calls / (FREE_TIER_DAILY / 2)))
        for n in range(keys):
            account = self.accounts[n % len(self.accounts)]
            _, raw = await self._setup(
                "POST", "/api/v1/api-keys", headers=account.auth, expect=(201,),
                json={"name": "soak", "scopes": ["users:read", "orgs:read", "files:read"]},
            )  # fmt: skip
            self.api_keys.append(orjson.loads(raw)["key"])

    async def _setup(
        self, method: str, path: str, *, expect: tuple[int, ...], retry_ok: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> tuple[int, bytes]:  # fmt: skip
        """A set-up call, retried on 5xx and connection errors (counted in `setup_retries`): the
        load must start from the same state whatever hiccup the set-up met."""
        for attempt in range(6):
            status, raw = await self.call("setup", method, path, expect=expect, **kwargs)
            if status is not None and (status in expect or (attempt and status in retry_ok)):
                return status, raw
            if status is not None and status < 500:
                break
            self.setup_retries += 1
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"set-up {method} {path} failed: {status} {raw[:200]!r}")

    # -- the scheduler ----------------------------------------------------------------------

    def operations(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {
            "me_get": self.me_get,
            "me_patch": self.me_patch,
            "apikey_get": self.apikey_get,
            "orgs_list": self.orgs_list,
            "org_get": self.org_get,
            "members_list": self.members_list,
            "org_create": self.org_create,
            "invite_accept": self.invite_accept,
            "file_upload": self.file_upload,
            "file_download": self.file_download,
            "file_meta": self.file_meta,
            "login": self.login,
            "anon": self.anon_get,
        }

    async def run(self, seconds: float) -> None:
        """Launch every operation at its rate for `seconds`, then wait for what is in flight."""
        ops = self.operations()
        rates = {name: MIX[name][0] * self.scale for name in ops}
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            for name, op in ops.items():
                for _ in range(int(rates[name] * elapsed) - self.launched[name]):
                    self.launched[name] += 1
                    if len(self.inflight) >= MAX_INFLIGHT:
                        self.skipped += 1
                        continue
                    task = asyncio.create_task(self._guarded(name, op))
                    self.inflight.add(task)
                    task.add_done_callback(self.inflight.discard)
            await asyncio.sleep(0.005)
        if self.inflight:
            _done, pending = await asyncio.wait(self.inflight, timeout=REQUEST_TIMEOUT + 5)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    async def _guarded(self, name: str, op: Callable[[], Awaitable[None]]) -> None:
        try:
            await op()
        except Exception as exc:  # the generator's own bug: count it, keep the load going
            self.recorder.client_bugs += 1
            self.recorder.error(name, f"generator raised {type(exc).__name__}: {exc}")

    # -- operations -------------------------------------------------------------------------

    def _account(self) -> Account:
        return self.random.choice(self.accounts)

    def _org(self) -> Org | None:
        live = [o for o in self.orgs if not o.retired]
        return self.random.choice(live) if live else None

    async def me_get(self) -> None:
        account = self._account()
        await self.call("GET /users/me", "GET", "/api/v1/users/me", headers=account.auth,
                        expect=(200,))  # fmt: skip

    async def me_patch(self) -> None:
        account = self._account()
        async with account.lock:  # our own write, then our own read: nothing of ours between
            account.renames += 1
            name = f"Soak {account.id[-6:]} #{account.renames}"
            status, _ = await self.call(
                "PATCH /users/me", "PATCH", "/api/v1/users/me", headers=account.auth,
                json={"display_name": name}, expect=(200,),
            )  # fmt: skip
            if status != 200:
                return
            seen: dict[str, str] = {}
            status, raw = await self.call(
                "GET /users/me after PATCH", "GET", "/api/v1/users/me", headers=account.auth,
                expect=(200,), seen=seen,
            )  # fmt: skip
            if status == 200 and orjson.loads(raw)["display_name"] != name:
                self.recorder.stale_reads += 1
                self.recorder.error(
                    "GET /users/me after PATCH", f"read its own stale write; headers {seen}"
                )

    async def apikey_get(self) -> None:
        key = self.random.choice(self.api_keys)
        path = self.random.choice(("/api/v1/users/me", "/api/v1/orgs"))
        await self.call(f"API key GET {path[7:]}", "GET", path, headers={"X-API-Key": key},
                        expect=(200,))  # fmt: skip

    async def orgs_list(self) -> None:
        account = self._account()
        await self.call("GET /orgs", "GET", "/api/v1/orgs", headers=account.auth, expect=(200,))

    def _org_reader(self, org: Org) -> Account:
        """The owner or a member who has accepted (orgs knows them at once)."""
        members = [org.owner, *(a for a, joined in org.members.values() if joined != math.inf)]
        return self.random.choice(members)

    async def org_get(self) -> None:
        org = self._org()
        if org is None:
            return
        await self.call(
            "GET /orgs/{id}", "GET", f"/api/v1/orgs/{org.id}",
            headers=self._org_reader(org).auth, expect=(200,), gone=lambda: org.retired,
        )  # fmt: skip

    async def members_list(self) -> None:
        org = self._org()
        if org is None:
            return
        await self.call(
            "GET /orgs/{id}/members", "GET", f"/api/v1/orgs/{org.id}/members",
            headers=self._org_reader(org).auth, expect=(200,), gone=lambda: org.retired,
        )  # fmt: skip

    async def _create_org(self, account: Account) -> None:
        slug = f"soak-{uuid.uuid4().hex[:12]}"
        status, raw = await self.call(
            "POST /orgs", "POST", "/api/v1/orgs", headers=account.auth,
            json={"name": f"Soak org {slug[-4:]}", "slug": slug}, expect=(201,),
        )  # fmt: skip
        if status == 201:
            org = Org(id=orjson.loads(raw)["id"], owner=account, created=time.monotonic())
            account.owned.append(org)
            self.orgs.append(org)

    async def org_create(self) -> None:
        account = self._account()
        await self._create_org(account)
        if len(account.owned) > OWNED_ORGS_MAX:
            oldest = account.owned.pop(0)
            oldest.retired = True  # first out of every pool, then deleted
            self.orgs.remove(oldest)
            await self.call(
                "DELETE /orgs/{id}", "DELETE", f"/api/v1/orgs/{oldest.id}",
                headers=account.auth, expect=(204,),
            )  # fmt: skip

    async def invite_accept(self) -> None:
        org = self._org()
        if org is None:
            return
        outsiders = [a for a in self.accounts if a is not org.owner and a.id not in org.members]
        if not outsiders:
            return
        invitee = self.random.choice(outsiders)
        org.members[invitee.id] = (invitee, math.inf)  # reserved: no second invitation
        status, raw = await self.call(
            "POST /orgs/{id}/invitations", "POST", f"/api/v1/orgs/{org.id}/invitations",
            headers=org.owner.auth, json={"email": invitee.email, "role": "member"},
            expect=(201,), gone=lambda: org.retired,
        )  # fmt: skip
        if status != 201:
            org.members.pop(invitee.id, None)
            return
        token = orjson.loads(raw)["token"]
        status, _ = await self.call(
            "POST /invitations/{token}/accept", "POST", f"/api/v1/invitations/{token}/accept",
            headers=invitee.auth, expect=(200,), gone=lambda: org.retired,
        )  # fmt: skip
        if status == 200:
            org.members[invitee.id] = (invitee, time.monotonic())
        else:
            org.members.pop(invitee.id, None)

    async def file_upload(self) -> None:
        account = self._account()
        now = time.monotonic()
        settled = [o for o in account.owned if not o.retired and now - o.created >= SETTLE_SECONDS]
        org = self.random.choice(settled) if settled and self.random.random() < 0.4 else None
        body = self._text(self.random.randint(200, 4000))
        if self.random.random() < 0.5:
            form = aiohttp.FormData()
            if org is not None:
                form.add_field("org_id", org.id)
            form.add_field("file", body, filename="soak.txt", content_type="text/plain")
            kwargs: dict[str, Any] = {"data": form}
        else:
            params = {"name": "soak.txt", **({"org_id": org.id} if org else {})}
            kwargs = {"data": body, "params": params, "headers": {"Content-Type": "text/plain"}}
        kwargs["headers"] = {**kwargs.get("headers", {}), **account.auth}
        status, raw = await self.call(
            "POST /files", "POST", "/api/v1/files", expect=(201,),
            gone=(lambda: org.retired) if org is not None else None, **kwargs,
        )  # fmt: skip
        if status == 201:
            self.files.append(StoredFile(orjson.loads(raw)["id"], account, org, body))
        if len(self.files) > FILES_MAX:
            old = self.files.popleft()
            await self.call(
                "DELETE /files/{id}", "DELETE", f"/api/v1/files/{old.id}",
                headers=old.owner.auth, expect=(204,), gone=lambda: self._file_gone(old),
            )  # fmt: skip

    def _text(self, size: int) -> bytes:
        words = (b"portico ", b"soak ", b"gateway ", b"cache ", b"event ", b"outbox ")
        out = bytearray()
        while len(out) < size:
            out += self.random.choice(words)
        return bytes(out[:size]) + b"\n"

    @staticmethod
    def _file_gone(stored: StoredFile) -> bool:
        return stored.org is not None and stored.org.retired  # org.deleted -> its files go

    def _deleted(self, stored: StoredFile) -> bool:
        return self._file_gone(stored) or stored not in self.files

    def _file(self) -> StoredFile | None:
        live = [f for f in self.files if not self._file_gone(f)]
        return self.random.choice(live) if live else None

    async def file_download(self) -> None:
        stored = self._file()
        if stored is None:
            return
        readers = [stored.owner]
        if stored.org is not None:  # any member the files service must know of by now
            readers += stored.org.settled_members(time.monotonic())
        status, raw = await self.call(
            "GET /files/{id}/content", "GET", f"/api/v1/files/{stored.id}/content",
            headers=self.random.choice(readers).auth, expect=(200,),
            gone=lambda: self._deleted(stored),
        )  # fmt: skip
        if status == 200 and raw != stored.body:
            self.recorder.bad_bodies += 1
            self.recorder.error("GET /files/{id}/content", "downloaded bytes differ from upload")

    async def file_meta(self) -> None:
        stored = self._file()
        if stored is None:
            return
        await self.call(
            "GET /files/{id}", "GET", f"/api/v1/files/{stored.id}", headers=stored.owner.auth,
            expect=(200,), gone=lambda: self._deleted(stored),
        )  # fmt: skip

    async def login(self) -> None:
        account = self._account()
        status, raw = await self.call(
            "POST /auth/login", "POST", "/api/v1/auth/login", session=self._login_session(),
            json={"email": account.email, "password": PASSWORD}, expect=(200,),
        )  # fmt: skip
        if status == 200:  # tokens rotate, so a run longer than their lifetime keeps working
            account.token = orjson.loads(raw)["access_token"]

    async def anon_get(self) -> None:
        await self.call("anonymous GET /.well-known/jwks.json", "GET", "/.well-known/jwks.json",
                        session=self.anon, expect=(200,))  # fmt: skip
