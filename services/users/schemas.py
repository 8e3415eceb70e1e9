"""Request and response models of the users service (also the source of its OpenAPI document).

Request models forbid unknown fields: a body trying to set `roles`, `tier` or an owner is a 422,
never silently half-applied (mass assignment).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

from libs.common.pagination import PageParams
from libs.common.timestamps import Timestamp
from services.users.models import ApiKey, Session, User

Tier = Literal["free", "pro", "enterprise"]
Role = Literal["user", "admin"]
Scope = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:\-]{0,63}$")]
# Generous upper bounds only to cap parsing/hashing cost; the policy gives the real limits.
Password = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _DisplayNameCheck(Request):
    @field_validator("display_name", check_fields=False)
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must not contain control characters")
        return value


# -- auth --------------------------------------------------------------------------------


class RegisterRequest(_DisplayNameCheck):
    email: EmailStr = Field(max_length=254)
    password: Password
    display_name: DisplayName


class LoginRequest(Request):
    # Not validated as an email: a malformed one simply does not match (same 401).
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    password: Password


class RefreshRequest(Request):
    refresh_token: Token


class LogoutRequest(Request):
    refresh_token: Token | None = None


class PasswordChange(Request):
    current_password: Password
    new_password: Password


class PasswordResetRequest(Request):
    email: EmailStr = Field(max_length=254)


class PasswordResetConfirm(Request):
    token: Token
    new_password: Password


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int


class SessionPublic(BaseModel):
    id: str
    created_at: Timestamp
    last_used_at: Timestamp
    user_agent: str | None
    ip: str | None
    current: bool

    @classmethod
    def from_model(cls, session: Session, *, current_id: str | None) -> SessionPublic:
        return cls(
            id=str(session.id),
            created_at=session.created_at,
            last_used_at=session.last_used_at,
            user_agent=session.user_agent,
            ip=session.ip,
            current=str(session.id) == current_id,
        )


class SessionsPage(BaseModel):
    items: list[SessionPublic]
    next_cursor: str | None = None


class Jwk(BaseModel):
    kty: str
    crv: str
    x: str
    kid: str
    use: str
    alg: str


class Jwks(BaseModel):
    keys: list[Jwk]


# -- users -------------------------------------------------------------------------------


class UserPublic(BaseModel):
    """The full user object, for the user themself (and admins)."""

    id: str
    email: str
    display_name: str
    roles: list[str]
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def from_model(cls, user: User) -> UserPublic:
        return cls(
            id=str(user.id),
            email=user.email,
            display_name=user.display_name,
            roles=user.roles,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class UserAdminView(UserPublic):
    disabled: bool

    @classmethod
    def from_model(cls, user: User) -> UserAdminView:
        return cls(**UserPublic.from_model(user).model_dump(), disabled=user.disabled)


class UserProfile(BaseModel):
    """What anyone signed in may see of a user; `email` only for themself and admins."""

    model_config = ConfigDict(json_schema_extra={"required": ["id", "display_name", "created_at"]})

    id: str
    display_name: str
    created_at: Timestamp
    email: str | None = None

    @classmethod
    def from_model(cls, user: User, *, show_email: bool) -> UserProfile:
        return cls(
            id=str(user.id),
            display_name=user.display_name,
            created_at=user.created_at,
            email=user.email if show_email else None,
        )

    def render(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)


class UserUpdate(_DisplayNameCheck):
    display_name: DisplayName | None = None


class UsersQuery(PageParams):
    q: Annotated[str, StringConstraints(max_length=100)] | None = None


class UsersPage(BaseModel):
    items: list[UserProfile]
    next_cursor: str | None


class UsersBatch(Request):
    ids: list[Annotated[str, StringConstraints(max_length=64)]] = Field(max_length=100)


class UsersBatchResult(BaseModel):
    items: list[UserProfile]


class AdminUsersQuery(UsersQuery):
    role: Role | None = None
    disabled: bool | None = None


class AdminUsersPage(BaseModel):
    items: list[UserAdminView]
    next_cursor: str | None


class AdminUserUpdate(Request):
    roles: list[Role] | None = Field(None, max_length=2)
    disabled: bool | None = None


# -- API keys ----------------------------------------------------------------------------


class ApiKeyCreate(Request):
    name: DisplayName
    scopes: list[Scope] = Field(default_factory=list, max_length=32)


class ApiKeyPublic(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    tier: str
    created_at: Timestamp
    last_used_at: Timestamp | None

    @classmethod
    def from_model(cls, key: ApiKey) -> ApiKeyPublic:
        return cls(
            id=str(key.id),
            name=key.name,
            prefix=key.prefix,
            scopes=key.scopes,
            tier=key.tier,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
        )


class ApiKeyCreated(ApiKeyPublic):
    key: str  # the only time the plaintext is ever shown


class ApiKeysPage(BaseModel):
    items: list[ApiKeyPublic]
    next_cursor: str | None = None


class ApiKeyTierUpdate(Request):
    tier: Tier


class ApiKeyResolve(Request):
    key: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ApiKeyResolved(BaseModel):
    key_id: str
    user_id: str
    scopes: list[str]
    tier: str
    roles: list[str]
