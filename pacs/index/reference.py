"""Reference data in the index: the modalities and body parts that may be ordered, and which
modalities apply to which body part."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, delete, select, update

from pacs.errors import NotFound
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import body_part_modalities, body_parts, modalities


@dataclass(frozen=True)
class Modality:
    code: str
    display_name: str
    active: bool


@dataclass(frozen=True)
class BodyPart:
    code: str
    display_name: str
    active: bool
    modalities: tuple[str, ...]


class ReferenceRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def modalities(self) -> list[Modality]:
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(modalities).order_by(modalities.c.code)).all()
        return [Modality(r.code, r.display_name, bool(r.active)) for r in rows]

    def body_parts(self) -> list[BodyPart]:
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(body_parts).order_by(body_parts.c.code)).all()
            links = conn.execute(select(body_part_modalities).order_by(body_part_modalities.c.modality)).all()
        applies: dict[str, list[str]] = {}
        for link in links:
            applies.setdefault(link.body_part, []).append(link.modality)
        return [BodyPart(r.code, r.display_name, bool(r.active), tuple(applies.get(r.code, ()))) for r in rows]

    def put_modality(self, code: str, display_name: str, active: bool) -> None:
        with write_transaction(self.engine) as conn:
            found = conn.execute(select(modalities.c.code).where(modalities.c.code == code)).first()
            if found is None:
                conn.execute(modalities.insert().values(code=code, display_name=display_name, active=active))
            else:
                stmt = update(modalities).where(modalities.c.code == code)
                conn.execute(stmt.values(display_name=display_name, active=active))

    def put_body_part(self, code: str, display_name: str, active: bool, applies_to: tuple[str, ...]) -> None:
        """Create or replace a body part and the modalities it applies to (which must exist)."""
        with write_transaction(self.engine) as conn:
            known = set(conn.execute(select(modalities.c.code).where(modalities.c.code.in_(applies_to))).scalars())
            missing = sorted(set(applies_to) - known)
            if missing:
                raise NotFound(f"no modality {', '.join(missing)}")
            found = conn.execute(select(body_parts.c.code).where(body_parts.c.code == code)).first()
            if found is None:
                conn.execute(body_parts.insert().values(code=code, display_name=display_name, active=active))
            else:
                stmt = update(body_parts).where(body_parts.c.code == code)
                conn.execute(stmt.values(display_name=display_name, active=active))
            conn.execute(delete(body_part_modalities).where(body_part_modalities.c.body_part == code))
            if applies_to:
                conn.execute(body_part_modalities.insert(), [{"body_part": code, "modality": m} for m in applies_to])
