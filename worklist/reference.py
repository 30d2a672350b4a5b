"""Which modalities and body parts may be ordered: checks orders against the reference data
in the index and lets admins edit it. Read through a short cache, so intake of many orders does
not read the same rows for each, while edits on any worker show within seconds."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from pacs.errors import InvalidInput
from pacs.index.reference import BodyPart, Modality, ReferenceRepository

_CACHE_SECONDS = 5.0
_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")  # CS: upper case, digits, space, underscore


class ReferenceData:
    def __init__(self, repository: ReferenceRepository) -> None:
        self.repository = repository
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._modalities: dict[str, Modality] = {}
        self._body_parts: dict[str, BodyPart] = {}

    def _fresh(self) -> tuple[dict[str, Modality], dict[str, BodyPart]]:
        with self._lock:
            if time.monotonic() - self._loaded_at > _CACHE_SECONDS:
                self._modalities = {m.code: m for m in self.repository.modalities()}
                self._body_parts = {b.code: b for b in self.repository.body_parts()}
                self._loaded_at = time.monotonic()
            return self._modalities, self._body_parts

    def _forget(self) -> None:
        with self._lock:
            self._loaded_at = float("-inf")

    def modalities(self) -> list[Modality]:
        return list(self._fresh()[0].values())

    def body_parts(self) -> list[BodyPart]:
        return list(self._fresh()[1].values())

    def display_name(self, modality: str) -> str | None:
        found = self._fresh()[0].get(modality)
        return found.display_name if found else None

    def check_known_modality(self, modality: str) -> None:
        """For searches: any modality ever in the list, active or not."""
        if modality not in self._fresh()[0]:
            raise InvalidInput(f"unknown modality {modality!r}; one of {', '.join(self._fresh()[0])}")

    def check(self, modality: str | None, body_part: str | None) -> None:
        """InvalidInput unless the modality is active and the body part (if any) is known,
        active and applies to that modality."""
        known_modalities, known_parts = self._fresh()
        if modality is not None:
            found = known_modalities.get(modality)
            if found is None or not found.active:
                active = ", ".join(code for code, m in known_modalities.items() if m.active)
                raise InvalidInput(f"modality {modality!r} is not one that may be ordered; one of {active}")
        if body_part is None:
            return
        part = known_parts.get(body_part)
        if part is None or not part.active:
            raise InvalidInput(f"body part {body_part!r} is not known; GET /api/reference/body-parts lists them")
        if modality is not None and modality not in part.modalities:
            raise InvalidInput(
                f"body part {body_part} is not examined with {modality}; it applies to {', '.join(part.modalities)}"
            )

    def put_modality(self, code: str, body: Mapping[str, Any]) -> Modality:
        code = _code(code, "modality")
        name, active = _entry(body)
        self.repository.put_modality(code, name, active)
        self._forget()
        return self._fresh()[0][code]

    def put_body_part(self, code: str, body: Mapping[str, Any]) -> BodyPart:
        code = _code(code, "body part")
        name, active = _entry(body)
        applies = body.get("modalities", [])
        if not isinstance(applies, list) or not all(isinstance(m, str) for m in applies):
            raise InvalidInput("modalities must be a list of modality codes")
        self.repository.put_body_part(code, name, active, tuple(dict.fromkeys(m.strip().upper() for m in applies)))
        self._forget()
        return self._fresh()[1][code]


def _code(raw: str, what: str) -> str:
    code = raw.strip().upper()
    if not _CODE.fullmatch(code):
        raise InvalidInput(f"{what} code {raw!r} must be 1 to 16 upper-case letters, digits or underscores")
    return code


def _entry(body: Mapping[str, Any]) -> tuple[str, bool]:
    name, active = body.get("display_name"), body.get("active", True)
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise InvalidInput("display_name is required, up to 64 characters")
    if not isinstance(active, bool):
        raise InvalidInput("active must be true or false")
    return name.strip(), active
