"""ASGI entry point for uvicorn workers: `uvicorn --factory pacs.asgi:app`."""

from __future__ import annotations

from starlette.applications import Starlette

from pacs.app import build_app
from pacs.config import Settings


def app() -> Starlette:
    return build_app(Settings.from_env())
