"""Patient Module attributes (PS3.3 C.7.1.1) written into an instance's DICOM JSON metadata
(PS3.18 F.2), for a study whose patient identity is corrected from its order."""

from __future__ import annotations

import json
from collections.abc import Mapping

from pacs.dicom.dicomjson import element

# column -> (tag as DICOM JSON keys it, VR)
PATIENT_TAGS = {
    "patient_name": ("00100010", "PN"),
    "patient_id": ("00100020", "LO"),
    "issuer_of_patient_id": ("00100021", "LO"),
    "patient_birth_date": ("00100030", "DA"),
    "patient_sex": ("00100040", "CS"),
}


def patched_patient(document: str, patient: Mapping[str, str | None]) -> str:
    """The metadata document with the patient's attributes replaced (an empty value becomes a
    present attribute without a value, as a Type 2 attribute with no value is written)."""
    metadata = json.loads(document)
    for column, (tag, vr) in PATIENT_TAGS.items():
        if column not in patient:
            continue
        metadata[tag] = element(vr, patient[column])
    if metadata == json.loads(document):
        return document
    return json.dumps(dict(sorted(metadata.items())), separators=(",", ":"), ensure_ascii=False)
