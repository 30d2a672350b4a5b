"""HTTP plumbing on the embedded backend: health, CORS, unknown routes, error format."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from pacs.app import build_app
from pacs.config import Settings


@pytest.fixture
def cors_client(sqlite_settings: Settings) -> Iterator[TestClient]:
    settings = sqlite_settings.replace(cors_origins=("https://viewer.example.org",), auth="off")
    with TestClient(build_app(settings)) as client:
        yield client


@pytest.fixture
def plain_client(sqlite_settings: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(sqlite_settings.replace(auth="off"))) as client:
        yield client


def test_health_answers_without_touching_phi(plain_client: TestClient) -> None:
    assert plain_client.get("/health").json() == {"status": "ok"}


def test_cors_preflight_allows_configured_origin(cors_client: TestClient) -> None:
    response = cors_client.options(
        "/dicom-web/studies",
        headers={
            "Origin": "https://viewer.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept, authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://viewer.example.org"
    assert "GET" in response.headers["access-control-allow-methods"]
    simple = cors_client.get("/dicom-web/studies", headers={"Origin": "https://viewer.example.org"})
    assert simple.headers["access-control-allow-origin"] == "https://viewer.example.org"


def test_cors_refuses_other_origins(cors_client: TestClient) -> None:
    response = cors_client.options(
        "/dicom-web/studies",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_no_cors_headers_unless_configured(plain_client: TestClient) -> None:
    response = plain_client.get("/dicom-web/studies", headers={"Origin": "https://viewer.example.org"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_unknown_route_and_method_are_json_errors(plain_client: TestClient) -> None:
    missing = plain_client.get("/dicom-web/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["status"] == 404
    wrong_method = plain_client.put("/dicom-web/studies")
    assert wrong_method.status_code == 405


def test_public_url_is_used_in_retrieve_urls(sqlite_settings: Settings) -> None:
    from tests.support.factories import make_ct, stow_body

    settings = sqlite_settings.replace(public_url="https://pacs.example.org/", auth="off")
    with TestClient(build_app(settings)) as client:
        body, content_type = stow_body([make_ct()])
        answer = client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type}).json()
        url = answer["00081199"]["Value"][0]["00081190"]["Value"][0]
        assert url.startswith("https://pacs.example.org/dicom-web/studies/")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("gzip, deflate", True), ("gzip;q=0", False), ("*", True), ("", False), ("identity", False), ("*, gzip;q=0", False)],
)
def test_accept_encoding_weights_decide_gzip(header: str, expected: bool) -> None:
    from dicomweb.responses import accepts_gzip

    assert accepts_gzip(header) is expected


def test_dotted_dates_are_indexed_as_plain_dates(plain_client: TestClient) -> None:
    from tests.support.factories import make_ct, stow_body

    ds = make_ct()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom notes the VR breach, as intended
        ds.StudyDate = "2024.01.15"  # old ACR-NEMA form, still found in the wild
        body, content_type = stow_body([ds])
        stored = plain_client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200
    found = plain_client.get("/dicom-web/studies", params={"StudyDate": "20240101-20240131"}).json()
    assert [s["00080020"]["Value"] for s in found] == [["20240115"]]
