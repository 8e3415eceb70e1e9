"""The audit log: security-relevant facts with who, from where and which request."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from services.users.models import AuditEntry
from services.users.service.context import RequestInfo

__all__ = ["Audit"]


class Audit:
    async def record(
        self,
        action: str,
        *,
        info: RequestInfo,
        user_id: str | None = None,
        actor_id: str | None = None,
        session: AsyncClientSession | None = None,
        **data: Any,
    ) -> None:
        """Append one entry; never pass secrets in `data`."""
        entry = AuditEntry(
            action=action,
            user_id=user_id,
            actor_id=actor_id or user_id,
            ip=info.ip,
            request_id=info.request_id,
            data=data,
        )
        await entry.insert(session=session)
