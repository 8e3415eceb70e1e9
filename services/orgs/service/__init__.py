"""Business rules of the orgs service; authorization lives in `rules.py` (one table)."""

from __future__ import annotations

from services.orgs.service.base import EmailFetcher, Page
from services.orgs.service.invitations import InvitationOps
from services.orgs.service.members import MemberOps
from services.orgs.service.orgs import OrgOps
from services.orgs.service.rules import RULES, Op, allowed
from services.orgs.service.teams import TeamOps

__all__ = ["RULES", "EmailFetcher", "Op", "OrgService", "Page", "allowed"]


class OrgService(OrgOps, MemberOps, TeamOps, InvitationOps):
    """Orgs, members, teams and invitations of one deployment."""
