"""The viewer at the site root: bundle files, index.html fallback, our config, the login redirect
for pages, public assets, and the install step's safe unpacking (on a small fake bundle)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import viewer_static.routes
from pacs.app import build_app
from pacs.config import Settings
from tests.support.server import create_user
from viewer_static import VERSION_FILE
from viewer_static.install import ViewerInstallError, installed_version, matches, unpack_dist

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _fake_tarball(path: Path, files: dict[str, bytes], name: str = "@ohif/app") -> Path:
    files = {"package/package.json": json.dumps({"name": name, "version": "3.13.9"}).encode(), **files}
    with tarfile.open(path, "w:gz") as archive:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tarball = _fake_tarball(
        tmp_path / "app.tgz",
        {
            "package/dist/index.html": b"<!doctype html><title>OHIF Viewer</title>",
            "package/dist/app.bundle.0123456789abcdef.js": b"console.log('ohif')",
            "package/dist/app-config.js": b"window.config = {theirs: true}",
            "package/dist/assets/favicon.ico": b"\x00\x00\x01\x00",
            "package/dist/ort/ort.wasm": b"\x00asm",
            "package/dist/dicom-microscopy-viewer/x.js": b"",
        },
    )
    target = tmp_path / "ohif"
    assert unpack_dist(tarball, target) == "3.13.9"
    (target / VERSION_FILE).write_text("3.13.9\n")
    monkeypatch.setattr(viewer_static.routes, "BUNDLE_DIR", target)
    return target


@pytest.fixture
def guarded_settings(sqlite_settings: Settings) -> Settings:
    return sqlite_settings.replace(auth="on")


@pytest.fixture
def anonymous(guarded_settings: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(guarded_settings), follow_redirects=False) as client:
        yield client


def test_unpack_keeps_dist_only_without_dropped_folders(bundle: Path) -> None:
    names = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert names == [VERSION_FILE, "app.bundle.0123456789abcdef.js", "assets/favicon.ico", "index.html"]
    assert installed_version(bundle) == "3.13.9"


def test_unpack_refuses_escaping_members_and_other_packages(tmp_path: Path) -> None:
    evil = _fake_tarball(tmp_path / "evil.tgz", {"package/dist/index.html": b"", "package/dist/../../x": b"!"})
    with pytest.raises(tarfile.FilterError):
        unpack_dist(evil, tmp_path / "out")
    assert not (tmp_path / "x").exists()
    other = _fake_tarball(tmp_path / "other.tgz", {"package/dist/index.html": b""}, name="left-pad")
    with pytest.raises(ViewerInstallError):
        unpack_dist(other, tmp_path / "out2")


def test_version_spec_matching() -> None:
    assert matches("3.13.2", "3.13.x") and matches("3.13.2", "3.13.2")
    assert not matches("3.14.0", "3.13.x") and not matches("3.13.2", "3.13.3")


def test_viewer_pages_redirect_a_browser_to_login(bundle: Path, anonymous: TestClient) -> None:
    for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/mode/viewer", "/viewer/study/1.2.3"):
        response = anonymous.get(path, headers=HTML)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F"), path
    assert anonymous.get("/viewer?StudyInstanceUIDs=1.2.3", headers=HTML).headers["location"] == (
        "/login?next=%2Fviewer%3FStudyInstanceUIDs%3D1.2.3"
    )
    # Programs (no text/html) and the API keep their 401.
    assert anonymous.get("/viewer").status_code == 401
    assert anonymous.get("/dicom-web/studies", headers=HTML).status_code == 401
    assert anonymous.get("/api/me", headers=HTML).status_code == 401


def test_viewer_assets_and_config_are_public(bundle: Path, anonymous: TestClient) -> None:
    script = anonymous.get("/app.bundle.0123456789abcdef.js")
    assert script.status_code == 200 and script.text == "console.log('ohif')"
    assert "immutable" in script.headers["cache-control"]
    assert anonymous.get("/assets/favicon.ico").content == b"\x00\x00\x01\x00"
    config = anonymous.get("/app-config.js")
    assert config.status_code == 200 and config.headers["content-type"].startswith("text/javascript")
    assert "qidoRoot: '/dicom-web'" in config.text and "theirs" not in config.text
    assert anonymous.get("/missing.js").status_code == 404
    assert anonymous.get("/..%2f..%2fetc/passwd.txt").status_code == 404


def test_logged_in_browser_gets_the_viewer(bundle: Path, guarded_settings: Settings) -> None:
    name, _ = create_user(guarded_settings, "radiologist", password="correct horse battery")
    with TestClient(build_app(guarded_settings), follow_redirects=False) as client:
        assert client.post("/api/login", json={"username": name, "password": "correct horse battery"}).status_code == 200
        for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/mode/viewer/x"):
            page = client.get(path, headers=HTML)
            assert page.status_code == 200 and "OHIF Viewer" in page.text, path
        link = client.get("/viewer/study/1.2.840.99", headers=HTML)
        assert link.status_code == 303 and link.headers["location"] == "/viewer?StudyInstanceUIDs=1.2.840.99"
        assert client.get("/api/nothing-here").status_code == 404  # an API path never gets index.html
        assert client.get("/dicom-web").status_code == 404


def test_without_a_bundle_the_page_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_settings: Settings
) -> None:
    monkeypatch.setattr(viewer_static.routes, "BUNDLE_DIR", tmp_path / "none")
    with TestClient(build_app(sqlite_settings.replace(auth="off"))) as client:
        page = client.get("/", headers=HTML)
        assert page.status_code == 503 and "minipacs viewer install" in page.text
        assert client.get("/app.bundle.js").status_code == 404
        assert client.get("/health").json() == {"status": "ok"}
