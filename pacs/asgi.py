"""ASGI entry point for uvicorn workers: `uvicorn --factory pacs.asgi:app`."""

from __future__ import annotations

from starlette.applications import Starlette

from pacs.app import build_app
from pacs.config import Settings


def app() -> Starlette:
    # `minipacs serve` has migrated the database once before starting the workers.
    return build_app(Settings.from_env(), migrate=False)
