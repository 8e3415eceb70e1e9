"""The typed application keys the users service stores."""

from __future__ import annotations

from aiohttp import web

from services.users.service.accounts import Accounts
from services.users.service.apikeys import ApiKeys
from services.users.service.auth import AuthService
from services.users.service.credentials import Credentials
from services.users.service.sessions import Sessions
from services.users.service.signing import KeyRing
from services.users.settings import Settings

__all__ = [
    "ACCOUNTS",
    "API_KEYS",
    "AUTH",
    "CREDENTIALS",
    "KEYRING",
    "OPENAPI",
    "SESSIONS",
    "SETTINGS",
]

AUTH = web.AppKey("users_auth", AuthService)
ACCOUNTS = web.AppKey("users_accounts", Accounts)
API_KEYS = web.AppKey("users_api_keys", ApiKeys)
SESSIONS = web.AppKey("users_sessions", Sessions)
CREDENTIALS = web.AppKey("users_credentials", Credentials)
KEYRING = web.AppKey("users_keyring", KeyRing)
SETTINGS = web.AppKey("users_settings", Settings)
OPENAPI = web.AppKey("users_openapi", bytes)
