"""QIDO-RS (PS3.18 10.6) on both backends: resources, matching, include fields, paging,
DICOM JSON (Annex F) and refusal of bad input.

Most tests read one archive filled once per backend (module scope); tests that store more
data use the per-test `client`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage, CTImageStorage, MRImageStorage, generate_uid
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.services import Services
from tests.conftest import BACKENDS, bearer_headers, make_settings
from tests.support.factories import make_ct, make_series, stow_body

JSON = {"Accept": "application/dicom+json"}
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
INTEGER_VRS = {"IS", "US", "UL", "SS", "SL"}


@dataclass
class Archive:
    client: TestClient
    studies: dict[str, str]  # key ("A".."E") -> StudyInstanceUID
    series: dict[str, str]  # key ("A1", "A2", "B1", ...) -> SeriesInstanceUID
    instances: dict[str, Dataset]  # SOPInstanceUID -> what was stored

    def key_of(self, uid: str) -> str:
        for key, value in {**self.studies, **self.series}.items():
            if value == uid:
                return key
        raise AssertionError(f"unexpected UID in an answer: {uid}")

    def get(self, path: str, params: Any = None, **headers: str) -> Any:
        response = self.client.get("/dicom-web" + path, params=params, headers={**JSON, **headers})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/dicom+json")
        return response.json()

    def study_keys(self, params: Any, path: str = "/studies") -> set[str]:
        return {self.key_of(value(item, STUDY_UID)) for item in self.get(path, params)}

    def series_keys(self, params: Any, path: str = "/series") -> set[str]:
        return {self.key_of(value(item, SERIES_UID)) for item in self.get(path, params)}


def value(item: dict[str, Any], tag: str) -> Any:
    """The first value of an attribute of a DICOM JSON object."""
    return item[tag]["Value"][0]


def sr_instance(**overrides: Any) -> Dataset:
    image_only: dict[str, Any] = dict.fromkeys(
        ["Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
         "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "PixelData"]
    )
    ds = make_ct(8, **image_only, **overrides)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    return ds


def study_data() -> tuple[dict[str, str], dict[str, str], list[Dataset]]:
    """Five studies chosen so that each matching rule separates them:
    names with case, UTF-8 and LIKE metacharacters, accession numbers containing % and _,
    dates and times on the edges of the ranges asked for, and a study with CT + SR series."""
    studies = {key: str(generate_uid()) for key in "ABCDE"}
    series = {key: str(generate_uid()) for key in ("A1", "A2", "B1", "C1", "D1", "E1")}
    common: dict[str, dict[str, Any]] = {
        "A": dict(PatientName="DOE^JOHN", PatientID="P-A", StudyDate="20240110", StudyTime="083000",
                  AccessionNumber="ACC%100", StudyID="S_1", ReferringPhysicianName="House^Gregory",
                  StudyDescription="CT CHEST"),
        "B": dict(PatientName="Müller^Jürgen", PatientID="P-B", StudyDate="20240131", StudyTime="235959",
                  AccessionNumber="ACC_200", StudyID="S21", ReferringPhysicianName="Watson^John",
                  StudyDescription="MR BRAIN"),
        "C": dict(PatientName="山田^太郎", PatientID="P-C", StudyDate="20231231", StudyTime="120000",
                  AccessionNumber="ACCX200", StudyID="S31", ReferringPhysicianName="House^Gregory",
                  StudyDescription="CT ABDOMEN"),
        "D": dict(PatientName="DOEBLING^ANNA", PatientID="P-D", StudyDate="20240201", StudyTime="000000",
                  AccessionNumber="ACCX100", StudyID="SX1", ReferringPhysicianName="",
                  StudyDescription="US NECK"),
        "E": dict(PatientName="100%^PERCENT", PatientID="P-E", StudyDate="20240115", StudyTime="101500",
                  AccessionNumber="acc%100", StudyID="S1", ReferringPhysicianName="Wilson^James",
                  StudyDescription="CT KNEE"),
    }
    a1 = make_series(3, StudyInstanceUID=studies["A"], SeriesInstanceUID=series["A1"], SeriesDescription="AXIAL",
                     SeriesDate="20240110", SeriesTime="083500", **common["A"])
    for ds, thickness in zip(a1, ("1.25", "2.5", "5"), strict=True):
        ds.SliceThickness = thickness
    a2 = [sr_instance(StudyInstanceUID=studies["A"], SeriesInstanceUID=series["A2"], Modality="SR",
                      SeriesNumber=2, SeriesDescription="REPORT", **common["A"])]
    b1 = make_series(2, StudyInstanceUID=studies["B"], SeriesInstanceUID=series["B1"], Modality="MR",
                     SOPClassUID=MRImageStorage, SeriesDescription="T1", BodyPartExamined="HEAD", **common["B"])
    for ds in b1:
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    others = [
        make_ct(8, StudyInstanceUID=studies[key], SeriesInstanceUID=series[key + "1"], Modality=modality,
                SeriesDescription=f"{key} SERIES", **common[key])
        for key, modality in (("C", "CT"), ("D", "US"), ("E", "CT"))
    ]
    return studies, series, [*a1, *a2, *b1, *others]


@pytest.fixture(scope="module", params=BACKENDS)
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    for settings in make_settings(request.param, tmp_path_factory.mktemp("qido"), request):
        services = Services.build(settings)
        try:
            with TestClient(build_app(settings, services), headers=bearer_headers(services)) as client:
                studies, series, datasets = study_data()
                body, content_type = stow_body(datasets)
                stored = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
                assert stored.status_code == 200, stored.text
                yield Archive(client, studies, series, {ds.SOPInstanceUID: ds for ds in datasets})
        finally:
            services.close()


def store(client: TestClient, datasets: list[Dataset]) -> None:
    body, content_type = stow_body(datasets)
    response = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def assert_annex_f(items: list[dict[str, Any]]) -> None:
    """Every attribute has a vr; a Value, when present, is a non-empty list of the VR's JSON type."""
    for item in items:
        for tag, attribute in item.items():
            assert len(tag) == 8 and tag == tag.upper(), tag
            assert "vr" in attribute, (tag, attribute)
            if "Value" not in attribute:
                continue
            values = attribute["Value"]
            assert isinstance(values, list) and values, (tag, attribute)
            if attribute["vr"] == "PN":
                assert all(isinstance(v, dict) and set(v) <= {"Alphabetic", "Ideographic", "Phonetic"} for v in values)
            elif attribute["vr"] in INTEGER_VRS:
                assert all(type(v) is int for v in values), (tag, attribute)
            elif attribute["vr"] == "SQ":
                assert_annex_f(values)
            else:
                assert all(isinstance(v, (str, int, float)) for v in values), (tag, attribute)


# --- resources -------------------------------------------------------------------------------


def test_studies_carry_patient_study_and_computed_attributes(archive: Archive) -> None:
    found = archive.get("/studies")
    assert_annex_f(found)
    by_key = {archive.key_of(value(s, STUDY_UID)): s for s in found}
    assert set(by_key) == set("ABCDE")
    a = by_key["A"]
    assert a["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}
    assert value(a, "00100020") == "P-A"
    assert a["00080020"] == {"vr": "DA", "Value": ["20240110"]}
    assert a["00080030"] == {"vr": "TM", "Value": ["083000"]}
    assert value(a, "00080050") == "ACC%100"
    assert value(a, "00200010") == "S_1"
    assert value(a, "00081030") == "CT CHEST"
    assert a["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "House^Gregory"}]}
    assert a["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert a["00201206"] == {"vr": "IS", "Value": [2]}
    assert a["00201208"] == {"vr": "IS", "Value": [4]}
    assert a["00081190"] == {"vr": "UR", "Value": [f"http://testserver/dicom-web/studies/{archive.studies['A']}"]}
    assert by_key["B"]["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
    assert by_key["C"]["00100010"]["Value"] == [{"Alphabetic": "山田^太郎"}]
    assert by_key["D"]["00080090"] == {"vr": "PN"}  # empty: no Value member (PS3.18 F.2.5)


def test_retrieve_url_of_a_study_resolves(archive: Archive) -> None:
    [study] = archive.get("/studies", {"PatientID": "P-C"})
    answer = archive.client.get(value(study, "00081190"))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("multipart/related")


def test_series_of_a_study(archive: Archive) -> None:
    found = archive.get(f"/studies/{archive.studies['A']}/series")
    assert_annex_f(found)
    by_key = {archive.key_of(value(s, SERIES_UID)): s for s in found}
    assert set(by_key) == {"A1", "A2"}
    a1, a2 = by_key["A1"], by_key["A2"]
    assert {value(s, STUDY_UID) for s in found} == {archive.studies["A"]}
    assert (value(a1, "00080060"), value(a2, "00080060")) == ("CT", "SR")
    assert (a1["00200011"], a2["00200011"]) == ({"vr": "IS", "Value": [1]}, {"vr": "IS", "Value": [2]})
    assert (value(a1, "0008103E"), value(a2, "0008103E")) == ("AXIAL", "REPORT")
    assert (a1["00201209"], a2["00201209"]) == ({"vr": "IS", "Value": [3]}, {"vr": "IS", "Value": [1]})
    assert value(a1, "00081190").endswith(f"/studies/{archive.studies['A']}/series/{archive.series['A1']}")
    # A study-scoped search does not repeat the study's own attributes.
    assert "00100010" not in a1 and "00080020" not in a1


def test_all_series(archive: Archive) -> None:
    found = archive.get("/series")
    assert_annex_f(found)
    assert {archive.key_of(value(s, SERIES_UID)) for s in found} == {"A1", "A2", "B1", "C1", "D1", "E1"}
    b1 = next(s for s in found if value(s, SERIES_UID) == archive.series["B1"])
    assert value(b1, STUDY_UID) == archive.studies["B"]
    assert b1["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]  # unscoped: study attributes too
    assert b1["00201209"]["Value"] == [2]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/instances", 9),
        ("/studies/{A}/instances", 4),
        ("/studies/{A}/series/{A1}/instances", 3),
        ("/studies/{B}/series/{B1}/instances", 2),
    ],
)
def test_instance_resources(archive: Archive, path: str, expected: int) -> None:
    found = archive.get(path.format(**archive.studies, **archive.series))
    assert_annex_f(found)
    assert len(found) == expected
    for item in found:
        stored = archive.instances[value(item, SOP_UID)]
        assert value(item, "00080016") == stored.SOPClassUID
        assert item["00200013"] == {"vr": "IS", "Value": [int(stored.InstanceNumber)]}
        assert value(item, STUDY_UID) == stored.StudyInstanceUID
        assert value(item, SERIES_UID) == stored.SeriesInstanceUID
        assert value(item, "00081190") == (
            f"http://testserver/dicom-web/studies/{stored.StudyInstanceUID}/series/{stored.SeriesInstanceUID}"
            f"/instances/{stored.SOPInstanceUID}"
        )
        if "Rows" in stored:
            assert item["00280010"] == {"vr": "US", "Value": [int(stored.Rows)]}


# --- matching ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientID": "P-A"}, "A"),
        ({"00100020": "P-B"}, "B"),
        # person names: case-insensitive, wildcards, UTF-8 (httpx percent-encodes it)
        ({"PatientName": "DOE^JOHN"}, "A"),
        ({"PatientName": "doe^john"}, "A"),
        ({"PatientName": "doe*"}, "AD"),
        ({"PatientName": "DOE^*"}, "A"),
        ({"PatientName": "*john"}, "A"),
        ({"PatientName": "D?E*"}, "AD"),
        ({"PatientName": "JOHN"}, ""),
        ({"PatientName": "Müller^Jürgen"}, "B"),
        ({"PatientName": "müller*"}, "B"),
        ({"PatientName": "MÜLLER^JÜRGEN"}, "B"),
        ({"PatientName": "山田^太郎"}, "C"),
        ({"PatientName": "山田*"}, "C"),
        ({"PatientName": "山?^太郎"}, "C"),
        # % and _ are literal characters, never LIKE wildcards
        ({"PatientName": "100%*"}, "E"),
        ({"PatientName": "1?0%^PERCENT"}, "E"),
        ({"AccessionNumber": "ACC%100"}, "A"),
        ({"AccessionNumber": "ACC%*"}, "A"),
        ({"AccessionNumber": "ACC_*"}, "B"),
        ({"AccessionNumber": "ACC_200"}, "B"),
        ({"AccessionNumber": "ACC?200"}, "BC"),
        ({"AccessionNumber": "ACC*"}, "ABCD"),
        ({"AccessionNumber": "acc*"}, "E"),  # only person names ignore case
        ({"AccessionNumber": "*"}, "ABCDE"),
        ({"StudyID": "S_1"}, "A"),
        ({"StudyID": "S?1"}, "ABCD"),
        ({"StudyID": "S1"}, "E"),
        ({"ReferringPhysicianName": "house*"}, "AC"),
        ({"ReferringPhysicianName": "WATSON^JOHN"}, "B"),
        ({"StudyDescription": "CT*"}, "ACE"),
        # dates and times
        ({"StudyDate": "20240115"}, "E"),
        ({"StudyDate": "20240101-20240131"}, "ABE"),
        ({"StudyDate": "-20240131"}, "ABCE"),
        ({"StudyDate": "20240101-"}, "ABDE"),
        ({"StudyDate": "20231231-20231231"}, "C"),
        ({"StudyTime": "080000-120000"}, "ACE"),
        ({"StudyTime": "2300-"}, "B"),
        ({"StudyTime": "-0830"}, "AD"),
        ({"StudyTime": "101500"}, "E"),
        # modalities: any series of the study (PS3.4 C.6.1.1.5.1); Modality as an alias
        ({"ModalitiesInStudy": "SR"}, "A"),
        ({"Modality": "SR"}, "A"),
        ({"Modality": "CT"}, "ACE"),
        ({"00080060": "MR"}, "B"),
        ({"ModalitiesInStudy": "CT,MR"}, "ABCE"),
        ({"ModalitiesInStudy": "US\\MR"}, "BD"),
        ({"ModalitiesInStudy": "M*"}, "B"),
        # several conditions together
        ({"PatientName": "doe*", "StudyDate": "20240201"}, "D"),
        ({"Modality": "CT", "StudyDate": "20240101-"}, "AE"),
    ],
    ids=lambda p: json.dumps(p, ensure_ascii=False) if isinstance(p, dict) else p,
)
def test_study_matching(archive: Archive, params: dict[str, str], expected: str) -> None:
    assert archive.study_keys(params) == set(expected)


@pytest.mark.parametrize("separator", [",", "\\"])
def test_study_uid_list(archive: Archive, separator: str) -> None:
    uids = separator.join([archive.studies["A"], archive.studies["C"]])
    assert archive.study_keys({"StudyInstanceUID": uids}) == {"A", "C"}
    assert archive.study_keys({"StudyInstanceUID": archive.studies["D"]}) == {"D"}


def test_fuzzy_matching_finds_the_start_of_any_name_component(archive: Archive) -> None:
    assert archive.study_keys({"PatientName": "JOHN"}) == set()
    assert archive.study_keys({"PatientName": "JOHN", "fuzzymatching": "true"}) == {"A"}
    assert archive.study_keys({"PatientName": "jo", "fuzzymatching": "true"}) == {"A"}
    assert archive.study_keys({"PatientName": "jürg", "fuzzymatching": "true"}) == {"B"}
    assert archive.study_keys({"PatientName": "doe", "fuzzymatching": "true"}) == {"A", "D"}
    assert archive.study_keys({"PatientName": "doe", "fuzzymatching": "false"}) == set()


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/series", {"Modality": "SR"}, {"A2"}),
        ("/series", {"Modality": "CT"}, {"A1", "C1", "E1"}),
        ("/series", {"Modality": "CT,SR"}, {"A1", "A2", "C1", "E1"}),
        ("/series", {"SeriesNumber": "1"}, {"A1", "B1", "C1", "D1", "E1"}),
        ("/series", {"SeriesDescription": "AX*"}, {"A1"}),
        ("/series", {"PatientName": "doe*", "Modality": "US"}, {"D1"}),
        ("/series", {"SeriesDate": "20240101-"}, {"A1"}),
        ("/studies/{A}/series", {"SeriesNumber": "2"}, {"A2"}),
        ("/studies/{A}/series", {"00200011": "1"}, {"A1"}),
        ("/studies/{A}/series", {"Modality": "MR"}, set()),
        ("/studies/{B}/series", {"SeriesInstanceUID": "{B1}"}, {"B1"}),
        ("/series", {"StudyInstanceUID": "{A}"}, {"A1", "A2"}),
        ("/series", {"StudyInstanceUID": "{A},{C}", "Modality": "CT"}, {"A1", "C1"}),
        ("/studies/{A}/series", {"StudyInstanceUID": "{B}"}, set()),
    ],
)
def test_series_matching(archive: Archive, path: str, params: dict[str, str], expected: set[str]) -> None:
    names = {**archive.studies, **archive.series}
    params = {k: v.format(**names) for k, v in params.items()}
    assert archive.series_keys(params, path.format(**names)) == expected


def test_instance_matching(archive: Archive) -> None:
    [sr] = archive.get("/instances", {"SOPClassUID": BasicTextSRStorage})
    assert value(sr, SERIES_UID) == archive.series["A2"]
    assert len(archive.get("/instances", {"SOPClassUID": CTImageStorage})) == 6
    a1 = f"/studies/{archive.studies['A']}/series/{archive.series['A1']}/instances"
    [second] = archive.get(a1, {"InstanceNumber": "2"})
    assert second["00200013"] == {"vr": "IS", "Value": [2]}
    assert {value(i, "00200013") for i in archive.get(a1, {"InstanceNumber": "1,3"})} == {1, 3}
    some_uid = value(second, SOP_UID)
    assert [value(i, SOP_UID) for i in archive.get("/instances", {"SOPInstanceUID": some_uid})] == [some_uid]
    assert archive.get(f"/studies/{archive.studies['B']}/instances", {"SOPInstanceUID": some_uid}) == []
    assert len(archive.get("/instances", {"PatientID": "P-B"})) == 2


# --- include fields ------------------------------------------------------------------------


def slice_thickness_by_series(found: list[dict[str, Any]]) -> dict[str, Any]:
    return {value(s, SERIES_UID): s.get("00180050") for s in found}


@pytest.mark.parametrize("name", ["00180050", "SliceThickness"])
def test_includefield_by_tag_or_keyword_reads_the_stored_instance(archive: Archive, name: str) -> None:
    found = archive.get(f"/studies/{archive.studies['A']}/series", {"includefield": name})
    assert slice_thickness_by_series(found) == {
        archive.series["A1"]: {"vr": "DS", "Value": [1.25]},  # from the series' first instance
        archive.series["A2"]: None,  # the SR has none
    }
    plain = archive.get(f"/studies/{archive.studies['A']}/series")
    assert all("00180050" not in s for s in plain)


def test_includefield_at_instance_level_reads_each_instance(archive: Archive) -> None:
    path = f"/studies/{archive.studies['A']}/series/{archive.series['A1']}/instances"
    found = archive.get(path, {"includefield": "SliceThickness"})
    assert {value(i, "00200013"): i["00180050"]["Value"] for i in found} == {1: [1.25], 2: [2.5], 3: [5]}


@pytest.mark.parametrize(
    "params",
    [
        {"includefield": "SliceThickness,BodyPartExamined"},
        {"includefield": "00180050,00180015"},
        [("includefield", "SliceThickness"), ("includefield", "BodyPartExamined")],
    ],
)
def test_includefield_lists_and_repeats(archive: Archive, params: Any) -> None:
    found = {archive.key_of(value(s, STUDY_UID)): s for s in archive.get("/studies", params)}
    assert found["A"]["00180050"] == {"vr": "DS", "Value": [1.25]}
    assert found["B"]["00180015"] == {"vr": "CS", "Value": ["HEAD"]}  # a series attribute, asked on studies
    assert "00180015" not in found["A"] and "00180050" not in found["D"]


def test_includefield_all_adds_the_parent_attributes(archive: Archive) -> None:
    path = f"/studies/{archive.studies['B']}/series"
    [plain] = archive.get(path)
    [everything] = archive.get(path, {"includefield": "all"})
    assert "00100010" not in plain and "00081030" not in plain
    assert everything["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
    assert value(everything, "00081030") == "MR BRAIN"
    assert value(everything, "00100020") == "P-B"
    assert set(plain) < set(everything)


def test_includefield_of_a_catalogue_attribute(archive: Archive) -> None:
    [study] = archive.get("/studies", {"StudyInstanceUID": archive.studies["E"], "includefield": "00081030"})
    assert value(study, "00081030") == "CT KNEE"
    [series] = archive.get(f"/studies/{archive.studies['E']}/series", {"includefield": "PatientID"})
    assert value(series, "00100020") == "P-E"


# --- paging and warnings --------------------------------------------------------------------


def test_limit_and_offset_page_without_overlap(archive: Archive) -> None:
    pages = [archive.get("/studies", {"limit": "2", "offset": str(offset)}) for offset in (0, 2, 4, 6)]
    uids = [[value(s, STUDY_UID) for s in page] for page in pages]
    assert [len(page) for page in uids] == [2, 2, 1, 0]
    flat = [uid for page in uids for uid in page]
    assert len(flat) == len(set(flat)) == 5
    assert set(flat) == set(archive.studies.values())
    again = [value(s, STUDY_UID) for s in archive.get("/studies", {"limit": "2", "offset": "2"})]
    assert again == uids[1]
    everything = [value(s, STUDY_UID) for s in archive.get("/studies")]
    assert everything == flat  # pages are slices of one stable order
    instances = [value(i, SOP_UID) for o in range(0, 9, 4) for i in archive.get("/instances", {"limit": 4, "offset": o})]
    assert sorted(instances) == sorted(archive.instances)


def test_limit_above_the_maximum_is_clamped_with_a_warning(archive: Archive) -> None:
    response = archive.client.get("/dicom-web/studies", params={"limit": "5000"}, headers=JSON)
    assert response.status_code == 200
    assert response.headers["warning"].startswith("299 ")
    assert "limit" in response.headers["warning"]
    assert len(response.json()) == 5
    assert "warning" not in archive.client.get("/dicom-web/studies", params={"limit": "5"}).headers


@pytest.mark.parametrize("kind", BACKENDS)
def test_clamped_limit_returns_at_most_the_maximum(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    for settings in make_settings(kind, tmp_path, request, qido_max_limit=2, qido_default_limit=2):
        services = Services.build(settings)
        try:
            with TestClient(build_app(settings, services), headers=bearer_headers(services)) as client:
                store(client, [make_ct(8, seed=i) for i in range(3)])
                clamped = client.get("/dicom-web/studies", params={"limit": "3"})
                assert len(clamped.json()) == 2
                assert "2 results at most" in clamped.headers["warning"]
                assert len(client.get("/dicom-web/studies").json()) == 2  # default limit
                assert len(client.get("/dicom-web/studies", params={"offset": "2"}).json()) == 1
        finally:
            services.close()


def test_several_warnings_form_one_comma_separated_list(archive: Archive) -> None:
    response = archive.client.get("/dicom-web/studies", params={"SeriesDescription": "x", "limit": "5000"})
    warnings = re.findall(r'299 minipacs "([^"]*)"', response.headers["warning"])
    assert len(warnings) == 2
    assert re.fullmatch(r'299 minipacs "[^"]*", 299 minipacs "[^"]*"', response.headers["warning"])
    assert any("SeriesDescription" in w for w in warnings) and any("limit" in w for w in warnings)


@pytest.mark.parametrize("name", ["SeriesDescription", "00180050", "BodyPartExamined"])
def test_valid_attribute_without_matching_support_is_ignored_with_a_warning(archive: Archive, name: str) -> None:
    response = archive.client.get("/dicom-web/studies", params={name: "whatever"}, headers=JSON)
    assert response.status_code == 200
    assert name in response.headers["warning"]
    assert len(response.json()) == 5  # ignored, not turned into "matches nothing"


# --- the requests the OHIF viewer 3.13 sends ------------------------------------------------


OHIF_STUDIES = "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060,00080090,00100030"


@pytest.mark.parametrize("extra", ["", "&StudyInstanceUID=", "&00100020=P-A"])
def test_ohif_study_list(archive: Archive, extra: str) -> None:
    response = archive.client.get(OHIF_STUDIES + extra, headers=JSON)
    assert response.status_code == 200
    found = response.json()
    assert_annex_f(found)
    expected = {"A"} if "P-A" in extra else set("ABCDE")
    assert {archive.key_of(value(s, STUDY_UID)) for s in found} == expected
    a = next(s for s in found if value(s, STUDY_UID) == archive.studies["A"])
    for tag in ("00100010", "00100020", "00100030", "00080020", "00080030", "00080050", "00081030",
                "00080090", "00080061", "00201206", "00201208"):
        assert tag in a, tag
    assert value(a, "00100030") == "19700101"
    assert a["00080061"]["Value"] == ["CT", "SR"]
    assert (value(a, "00201206"), value(a, "00201208")) == (2, 4)


def test_ohif_series_list(archive: Archive) -> None:
    url = f"/dicom-web/studies/{archive.studies['A']}/series?includefield=00080021,00080031,0008103E,00200011"
    response = archive.client.get(url, headers=JSON)
    assert response.status_code == 200
    found = {value(s, SERIES_UID): s for s in response.json()}
    a1 = found[archive.series["A1"]]
    assert (value(a1, "00080060"), value(a1, "00200011"), value(a1, "0008103E")) == ("CT", 1, "AXIAL")
    assert (value(a1, "00080021"), value(a1, "00080031")) == ("20240110", "083500")
    assert value(found[archive.series["A2"]], "00080060") == "SR"


# --- gzip -----------------------------------------------------------------------------------


def test_large_answers_are_gzipped_when_accepted(archive: Archive) -> None:
    zipped = archive.client.get("/dicom-web/studies?includefield=all", headers={**JSON, "Accept-Encoding": "gzip"})
    plain = archive.client.get("/dicom-web/studies?includefield=all", headers={**JSON, "Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert len(plain.content) > 1024
    assert zipped.json() == plain.json()
    assert int(zipped.headers["content-length"]) < len(plain.content)
    small = archive.client.get("/dicom-web/studies?PatientID=nobody", headers={**JSON, "Accept-Encoding": "gzip"})
    assert small.json() == [] and "content-encoding" not in small.headers


def test_gzip_body_is_real_gzip(archive: Archive) -> None:
    with archive.client.stream(
        "GET", "/dicom-web/studies", headers={**JSON, "Accept-Encoding": "gzip"}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert raw[:2] == b"\x1f\x8b"
    assert len(json.loads(gzip.decompress(raw))) == 5


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/studies", {"StudyDate": "2024-13-45"}),
        ("/studies", {"StudyDate": "abc"}),
        ("/studies", {"StudyDate": "20240101-20230101"}),
        ("/studies", {"StudyDate": "20240230"}),
        ("/studies", {"StudyTime": "2500"}),
        ("/studies", {"StudyTime": "1100-1000"}),
        ("/studies", {"limit": "abc"}),
        ("/studies", {"limit": "-1"}),
        ("/studies", {"limit": "1.5"}),
        ("/studies", {"limit": "99999999999999999999"}),
        ("/studies", {"limit": "²"}),
        ("/studies", {"offset": "-3"}),
        ("/studies", {"offset": "x"}),
        ("/studies", {"NoSuchAttribute": "1"}),
        ("/studies", {"patientname": "DOE"}),
        ("/studies", {"StudyInstanceUID": "1.2.*"}),
        ("/studies", {"StudyInstanceUID": "1.2.?"}),
        ("/studies", {"StudyInstanceUID": "' OR 1=1 --"}),
        ("/studies", {"fuzzymatching": "maybe"}),
        ("/studies", {"includefield": "NoSuchAttribute"}),
        ("/studies", {"StudyInstanceUID": ","}),
        ("/studies", {"StudyInstanceUID": "\\"}),
        ("/studies", {"Modality": ","}),
        ("/studies", {"PatientID": "P-A\x00"}),  # PostgreSQL refuses NUL in text parameters
        ("/studies", {"PatientName": "\x00*"}),
        ("/series", {"SeriesNumber": "abc"}),
        ("/series", {"SeriesNumber": ","}),
        ("/instances", {"InstanceNumber": "1;DROP TABLE instances"}),
        ("/studies/1.2.3*/series", {}),
    ],
    ids=lambda p: json.dumps(p, ensure_ascii=False) if isinstance(p, dict) else p,
)
def test_bad_input_is_a_400_with_a_message(archive: Archive, path: str, params: dict[str, str]) -> None:
    response = archive.client.get("/dicom-web" + path, params=params, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message
    assert len(archive.get("/studies")) == 5  # still answering, nothing lost


@pytest.mark.parametrize(
    "params",
    [
        {"PatientName": "' OR 1=1 --"},
        {"PatientName": "' OR '1'='1"},
        {"PatientName": "%"},
        {"PatientName": "_"},
        {"PatientName": "\\"},
        {"AccessionNumber": "%"},
        {"AccessionNumber": "_"},
        {"AccessionNumber": "%%"},
        {"StudyID": "' OR '1'='1"},
        {"PatientID": "P-A' --"},
        {"StudyDescription": "x'); DROP TABLE studies; --"},
        {"ReferringPhysicianName": "%*"},
        {"Modality": "' OR 1=1 --"},
    ],
    ids=lambda p: json.dumps(p),
)
def test_sql_looking_values_match_nothing(archive: Archive, params: dict[str, str]) -> None:
    assert archive.get("/studies", params) == []
    assert len(archive.get("/studies")) == 5


@pytest.mark.parametrize(
    "path",
    [
        "/studies/1.2.3.4.5.6.7.8.9/series",
        "/studies/1.2.3.4.5.6.7.8.9/instances",
        "/studies/{A}/series/1.2.3.4.5.6.7.8.9/instances",
        "/studies/{B}/series/{A1}/instances",  # a series of another study
    ],
)
def test_unknown_scope_is_a_404(archive: Archive, path: str) -> None:
    response = archive.client.get("/dicom-web" + path.format(**archive.studies, **archive.series), headers=JSON)
    assert response.status_code == 404
    assert response.json()["error"]


def test_qido_answers_dicom_json_or_refuses(archive: Archive) -> None:
    assert archive.client.get("/dicom-web/studies", headers={"Accept": "application/json"}).status_code == 200
    assert archive.client.get("/dicom-web/studies", headers={"Accept": "*/*"}).status_code == 200
    refused = archive.client.get("/dicom-web/studies", headers={"Accept": "application/dicom"})
    assert refused.status_code == 406


# --- counts follow the archive --------------------------------------------------------------


def test_counts_after_adding_instances_to_an_existing_study(client: TestClient) -> None:
    first = make_series(2, PatientID="P-COUNT")
    study, series = first[0].StudyInstanceUID, first[0].SeriesInstanceUID
    store(client, first)

    def study_answer() -> dict[str, Any]:
        [found] = client.get("/dicom-web/studies", params={"PatientID": "P-COUNT"}).json()
        return found

    before = study_answer()
    assert (value(before, "00201206"), value(before, "00201208")) == (1, 2)
    assert before["00080061"]["Value"] == ["CT"]

    more = make_ct(8, seed=7, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=3, PatientID="P-COUNT")
    report = sr_instance(StudyInstanceUID=study, Modality="SR", SeriesNumber=2, PatientID="P-COUNT")
    store(client, [more, report])

    after = study_answer()
    assert (value(after, "00201206"), value(after, "00201208")) == (2, 4)
    assert after["00080061"]["Value"] == ["CT", "SR"]
    per_series = {
        value(s, SERIES_UID): value(s, "00201209") for s in client.get(f"/dicom-web/studies/{study}/series").json()
    }
    assert per_series == {series: 3, report.SeriesInstanceUID: 1}
    unscoped = client.get("/dicom-web/series", params={"SeriesInstanceUID": series}).json()
    assert [(value(s, "00201209"), value(s, "00201208")) for s in unscoped] == [(3, 4)]
    assert len(client.get(f"/dicom-web/studies/{study}/instances").json()) == 4
    assert client.get("/dicom-web/studies", params={"ModalitiesInStudy": "SR", "PatientID": "P-COUNT"}).json()
