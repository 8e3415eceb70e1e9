"""Business rules of the users service (no aiohttp here)."""

from services.users.service.accounts import Accounts
from services.users.service.apikeys import ApiKeys, Resolved
from services.users.service.audit import Audit
from services.users.service.auth import AuthService, TokenPair, TokenSettings
from services.users.service.context import Caller, RequestInfo
from services.users.service.credentials import Credentials
from services.users.service.guard import LoginGuard
from services.users.service.passwords import PasswordPolicy, Passwords
from services.users.service.revocation import Revocations
from services.users.service.sessions import Sessions
from services.users.service.signing import KeyRing, derive_kek

__all__ = [
    "Accounts",
    "ApiKeys",
    "Audit",
    "AuthService",
    "Caller",
    "Credentials",
    "KeyRing",
    "LoginGuard",
    "PasswordPolicy",
    "Passwords",
    "RequestInfo",
    "Resolved",
    "Revocations",
    "Sessions",
    "TokenPair",
    "TokenSettings",
    "derive_kek",
]
