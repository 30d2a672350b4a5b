"""The catalogue of attributes the index keeps per level.

One table drives the schema columns, what ingest extracts, what QIDO/C-FIND can match, and how
results are rendered as DICOM JSON. It covers the required matching and return keys of
PS3.18 Table 10.6.1-5 (and the PS3.4 C.6 unique/required keys used by C-FIND).
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword


class Level(enum.IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


# VRs whose values the index keeps (and matches, and renders) as integers.
INTEGER_VRS = frozenset({"US", "IS", "UL", "SS", "SL"})


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    vr: str
    column: str
    computed: bool = False  # maintained by the index, not read from the file
    parent: str | None = None  # for items of a sequence: the sequence keyword

    @functools.cached_property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag

    @functools.cached_property
    def tag_hex(self) -> str:
        return f"{self.tag:08X}"


def _snake(keyword: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])", "_", keyword).lower().replace("u_i_d", "uid")


def _attrs(level: Level, keywords: str, computed: str = "") -> list[Attribute]:
    found = []
    for names, is_computed in ((keywords, False), (computed, True)):
        for keyword in names.split():
            vr = dictionary_VR(keyword) if keyword != "ModalitiesInStudy" else "CS"
            found.append(Attribute(keyword, level, vr, _snake(keyword), is_computed))
    return found


CATALOGUE: list[Attribute] = [
    *_attrs(Level.PATIENT, "PatientName PatientID IssuerOfPatientID PatientBirthDate PatientSex"),
    *_attrs(
        Level.STUDY,
        "StudyInstanceUID StudyDate StudyTime AccessionNumber StudyID StudyDescription "
        "ReferringPhysicianName TimezoneOffsetFromUTC",
        "ModalitiesInStudy NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances",
    ),
    *_attrs(
        Level.SERIES,
        "SeriesInstanceUID Modality SeriesNumber SeriesDescription SeriesDate SeriesTime "
        "PerformedProcedureStepStartDate PerformedProcedureStepStartTime BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ),
    Attribute("ScheduledProcedureStepID", Level.SERIES, "SH", "scheduled_procedure_step_id",
              parent="RequestAttributesSequence"),
    Attribute("RequestedProcedureID", Level.SERIES, "SH", "requested_procedure_id",
              parent="RequestAttributesSequence"),
    *_attrs(
        Level.INSTANCE,
        "SOPInstanceUID SOPClassUID InstanceNumber Rows Columns BitsAllocated NumberOfFrames",
    ),
]

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in CATALOGUE}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in CATALOGUE}
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}


def level_attributes(level: Level) -> list[Attribute]:
    return [a for a in CATALOGUE if a.level == level]


def resolve_attribute_name(name: str) -> tuple[int, str | None]:
    """Turn a QIDO attribute reference (keyword or 8-hex-digit tag) into (tag, keyword).

    Raises KeyError for an unknown keyword or malformed tag; private and unknown-but-well-formed
    tags are allowed (keyword None).
    """
    text = name.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        tag = int(text, 16)
        return tag, keyword_for_tag(tag) or None
    found = tag_for_keyword(text)
    if found is None:
        raise KeyError(name)
    return found, text


def normalize_time(value: str | None) -> str | None:
    """TM values sort lexically once colons are gone and HHMMSS is padded (PS3.5 6.2)."""
    if not value:
        return None
    text = value.replace(":", "").strip()
    head, _, fraction = text.partition(".")
    head = head.ljust(6, "0")
    return f"{head}.{fraction}" if fraction else head
