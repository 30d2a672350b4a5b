"""Reading API requests: a JSON object body, and non-negative integer parameters."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from pacs.errors import InvalidInput


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInput("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("send a JSON object")
    return body


def non_negative(text: str | None, default: int) -> int:
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()):
        raise InvalidInput(f"{text!r} is not a non-negative integer")
    return int(text)
