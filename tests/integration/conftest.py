"""Fixtures for the DICOM (DIMSE) suites: the archive's listener over the `services` fixture
(so both backends), and a dcmtk storescp registered as a C-MOVE destination."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.dimse.server import DicomServer
from pacs.index.remote_aes import RemoteAE
from pacs.services import Services
from tests.support.dimse import StoreSCP, running_listener, running_storescp


@pytest.fixture
def listener(services: Services) -> Iterator[DicomServer]:
    with running_listener(services) as server:
        yield server


@pytest.fixture
def receiver(services: Services, tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp (+xa: every syntax) known to the archive as RECEIVER."""
    with running_storescp(tmp_path / "received", "RECEIVER") as scp:
        services.remote_aes.add(RemoteAE(scp.ae_title, "127.0.0.1", scp.port))
        yield scp
