"""Typed application keys of the files service."""

from __future__ import annotations

from aiohttp import web

from libs.common.events.wiring import Consumers
from services.files.service import FileService
from services.files.storage import ObjectStorage

FILES = web.AppKey("files", FileService)
STORAGE = web.AppKey("storage", ObjectStorage)
CONSUMERS = web.AppKey("consumers", Consumers)
