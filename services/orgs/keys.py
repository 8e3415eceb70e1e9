"""The typed application keys of the orgs service."""

from __future__ import annotations

from aiohttp import web

from services.orgs.service import OrgService

ORGS = web.AppKey("orgs", OrgService)
