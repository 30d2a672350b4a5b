"""The embedded OHIF viewer in a real browser (Debian's chromium, driven by Playwright) against a
running `minipacs serve`: log in through /login, list studies, open each one and read its pixels,
with no failed request to our server. Needs `minipacs viewer install` (scripts/test.sh runs it)."""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.config import Settings
from tests.support import postgres
from tests.support.factories import make_ct, stow_body
from tests.support.server import create_user, running_server
from viewer_static.install import installed_version

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORD = "correct horse battery staple"
PROVIDER_NAME = "Welby^Marcus"
CT_INSTANCES = 300
CT_SIZE = 512
IMAGE_TIMEOUT_MS = 90_000  # software WebGL on two cores
STOW_BATCH = 25

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(installed_version() is None, reason="the viewer is not installed (minipacs viewer install)"),
]

# True once the viewport's canvas holds an image: its pixels are not all one value. The canvas
# cornerstone draws each viewport into is a 2D canvas, so its pixels can be read back.
CANVAS_HAS_IMAGE = """() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) return false;
  const context = canvas.getContext('2d');
  if (!context) return false;
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let low = 765, high = 0;
  for (let i = 0; i < data.length; i += 4 * 31) {
    const value = data[i] + data[i + 1] + data[i + 2];
    if (value < low) low = value;
    if (value > high) high = value;
  }
  return high - low > 30;
}"""
# The same test, answering with the canvas as a PNG data URL: checked and captured in one step,
# since the viewer may replace its canvas between two separate evaluations.
CANVAS_IMAGE = CANVAS_HAS_IMAGE.replace(
    "return high - low > 30;", "return high - low > 30 ? canvas.toDataURL('image/png') : false;"
)


@dataclass
class Archive:
    url: str
    radiologist: str
    provider: str
    studies: dict[str, str]  # name -> StudyInstanceUID
    patients: dict[str, str]  # name -> PatientName as the study list shows it ("Family, Given")
    store_seconds: float = 0.0


@dataclass
class NetworkLog:
    """Failed requests and error answers from our server, as the page saw them."""

    origin: str
    problems: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("requestfailed", lambda request: self._failed(request))
        page.on("response", lambda response: self._answered(response))

    def _failed(self, request: Any) -> None:
        if request.url.startswith(self.origin):
            self.problems.append(f"failed {request.method} {request.url}: {request.failure}")

    def _answered(self, response: Any) -> None:
        if response.url.startswith(self.origin) and response.status >= 400:
            self.problems.append(f"{response.status} {response.request.method} {response.url}")


def _testfile(name: str, **changes: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    if path is None or not os.path.isfile(path):
        pytest.skip(f"pydicom test file {name} is not available")
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _ct_series(count: int, size: int) -> list[Dataset]:
    """A CT series with geometry (positions 2 mm apart), so OHIF treats it as a real stack."""
    study, series = generate_uid(), generate_uid()
    return [
        make_ct(
            size, seed=i, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1,
            PatientName="Ct^Stack", StudyDescription="CT STACK",
            ImagePositionPatient=[0.0, 0.0, 2.0 * i], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            PixelSpacing=[0.7, 0.7], SliceThickness=2.0,
        )
        for i in range(count)
    ]


def _shown(name: Any) -> str:
    return f"{name.family_name}, {name.given_name}"


def _store(url: str, token: str, datasets: list[Dataset]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for start in range(0, len(datasets), STOW_BATCH):
        body, content_type = stow_body(datasets[start:start + STOW_BATCH])
        response = httpx.post(
            f"{url}/dicom-web/studies", content=body, headers={**headers, "Content-Type": content_type}, timeout=120
        )
        assert response.status_code == 200, response.text[:500]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, pg_template: str) -> Iterator[Archive]:
    tmp = tmp_path_factory.mktemp("viewer")
    with postgres.cloned_database(pg_template) as dbname:
        settings = Settings.from_mapping({"data_dir": tmp / "data", "database_url": postgres.sqlalchemy_url(dbname)})
        _, admin_token = create_user(settings, "admin")
        radiologist, _ = create_user(settings, "radiologist", password=PASSWORD)
        provider, _ = create_user(settings, "provider", password=PASSWORD, provider_name=PROVIDER_NAME)
        datasets = {
            "mr": [_testfile("MR_small.dcm", PatientName="Mr^Small", ReferringPhysicianName=PROVIDER_NAME)],
            "us-multiframe": [_testfile("examples_ybr_color.dcm", PatientName="Us^Multiframe")],
            "jpeg2000": [_testfile("JPEG2000.dcm", PatientName="Jpeg^Twothousand")],
            "ct": _ct_series(CT_INSTANCES, CT_SIZE),
        }
        with running_server(settings, extra_env={"MINIPACS_DICOM_ENABLED": "off"}) as url:
            # The provider's study: it arrives with the accession number of an order they placed.
            mr = datasets["mr"][0]
            order = httpx.post(
                f"{url}/api/orders", headers={"Authorization": f"Bearer {admin_token}"},
                json={"patient_id": str(mr.PatientID), "patient_name": "Mr^Small", "modality": "MR",
                      "ordering_provider": PROVIDER_NAME},
            )
            assert order.status_code == 201, order.text
            mr.AccessionNumber = order.json()["accession_number"]
            started = time.monotonic()
            for items in datasets.values():
                _store(url, admin_token, items)
            yield Archive(
                url, radiologist, provider,
                studies={name: items[0].StudyInstanceUID for name, items in datasets.items()},
                patients={name: _shown(items[0].PatientName) for name, items in datasets.items()},
                store_seconds=time.monotonic() - started,
            )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _log_in(page: Any, user: str) -> None:
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


@pytest.fixture(scope="module")
def radiologist_state(browser: Any, archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A logged-in radiologist's cookies, reused by the tests that need a session."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{archive.url}/login?next=/")
    _log_in(page, archive.radiologist)
    page.wait_for_url(f"{archive.url}/")
    path = str(tmp_path_factory.mktemp("browser") / "radiologist.json")
    context.storage_state(path=path)
    context.close()
    return path


@pytest.fixture
def radiologist_page(browser: Any, archive: Archive, radiologist_state: str) -> Iterator[tuple[Any, NetworkLog]]:
    context = browser.new_context(storage_state=radiologist_state, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    network = NetworkLog(archive.url)
    network.watch(page)
    try:
        yield page, network
    finally:
        context.close()


def _canvas_pixels(data_url: str) -> np.ndarray:
    """The viewport canvas (its PNG data URL) as an RGB array: the canvas itself, without overlays."""
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _open_study(page: Any, archive: Archive, study: str) -> float:
    """Navigate to the study's viewer URL; seconds until its first image is on the canvas."""
    started = time.monotonic()
    page.goto(f"{archive.url}/viewer?StudyInstanceUIDs={study}")
    captured = page.wait_for_function(CANVAS_IMAGE, polling=100, timeout=IMAGE_TIMEOUT_MS)
    elapsed = time.monotonic() - started
    pixels = _canvas_pixels(captured.json_value())
    assert pixels.std() > 2 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, "the viewport is blank"
    return elapsed


def test_an_unauthenticated_visit_lands_on_login_then_on_the_page(browser: Any, archive: Archive) -> None:
    context = browser.new_context()
    page = context.new_page()
    network = NetworkLog(archive.url)
    try:
        target = f"/viewer?StudyInstanceUIDs={archive.studies['mr']}"
        page.goto(archive.url + target)
        assert page.url.startswith(f"{archive.url}/login?next=")
        assert page.locator("input[type=password]").count() == 1
        network.watch(page)
        _log_in(page, archive.radiologist)
        page.wait_for_url(archive.url + target)
        page.wait_for_function(CANVAS_HAS_IMAGE, polling=200, timeout=IMAGE_TIMEOUT_MS)
        assert network.problems == []
    finally:
        context.close()


def test_the_study_list_shows_every_study(radiologist_page: tuple[Any, NetworkLog], archive: Archive) -> None:
    page, network = radiologist_page
    page.goto(f"{archive.url}/")
    for patient in archive.patients.values():
        page.get_by_text(patient, exact=True).first.wait_for(timeout=60_000)
    assert network.problems == []


@pytest.mark.parametrize("name", ["mr", "us-multiframe", "jpeg2000"])
def test_each_study_shows_an_image(radiologist_page: tuple[Any, NetworkLog], archive: Archive, name: str) -> None:
    page, network = radiologist_page
    _open_study(page, archive, archive.studies[name])
    assert network.problems == []


def test_first_image_of_a_300_instance_ct(radiologist_page: tuple[Any, NetworkLog], archive: Archive) -> None:
    page, network = radiologist_page
    # From the study list, as a user would: the viewer's own files are then in the browser cache.
    # Leave it only once it has loaded, or the navigation aborts its requests.
    page.goto(f"{archive.url}/")
    page.get_by_text(archive.patients["ct"], exact=True).first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    seconds = _open_study(page, archive, archive.studies["ct"])
    print(
        f"\nfirst image of a {CT_INSTANCES}-instance {CT_SIZE}x{CT_SIZE} CT: {seconds:.2f} s after navigation "
        f"(stored in {archive.store_seconds:.1f} s)"
    )
    assert seconds < 60  # a loose sanity bound, not a benchmark
    assert network.problems == []


def test_a_provider_lists_only_their_study(browser: Any, archive: Archive) -> None:
    context = browser.new_context()
    page = context.new_page()
    network = NetworkLog(archive.url)
    network.watch(page)
    try:
        page.goto(f"{archive.url}/")
        assert page.url.startswith(f"{archive.url}/login?next=")
        _log_in(page, archive.provider)
        page.wait_for_url(f"{archive.url}/")
        page.get_by_text(archive.patients["mr"], exact=True).first.wait_for(timeout=60_000)
        for name in ("ct", "us-multiframe", "jpeg2000"):
            assert page.get_by_text(archive.patients[name], exact=True).count() == 0
        _open_study(page, archive, archive.studies["mr"])
        assert network.problems == []
    finally:
        context.close()


def test_a_study_link_opens_the_viewer(radiologist_page: tuple[Any, NetworkLog], archive: Archive) -> None:
    page, network = radiologist_page
    page.goto(f"{archive.url}/viewer/study/{archive.studies['jpeg2000']}")
    assert page.url == f"{archive.url}/viewer?StudyInstanceUIDs={archive.studies['jpeg2000']}"
    page.wait_for_function(CANVAS_HAS_IMAGE, polling=200, timeout=IMAGE_TIMEOUT_MS)
    assert network.problems == []
