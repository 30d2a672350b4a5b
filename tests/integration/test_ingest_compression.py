"""The optional ingest-time compression policy: named modalities are stored compressed (lossless),
others as sent, on both backends; pixels come back identical."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs.config import ConfigError, Settings
from pacs.services import Services
from tests.conftest import BACKENDS, make_settings
from tests.support.factories import make_ct

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture(params=BACKENDS)
def compressing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    for settings in make_settings(request.param, tmp_path, request, compress_on_ingest="CT=jpeg2000-lossless"):
        services = Services.build(settings)
        try:
            yield services
        finally:
            services.close()


def test_policy_compresses_the_named_modality_only(compressing: Services, tmp_path: Path) -> None:
    ct, mr = make_ct(64), make_ct(64, Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    for ds in (ct, mr):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert compressing.ingest.store_file(path, consume=True).ok
    stored_ct = compressing.retrieve.locate(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)[0]
    stored_mr = compressing.retrieve.locate(mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID)[0]
    assert stored_ct.transfer_syntax_uid == JPEG2000_LOSSLESS
    assert stored_mr.transfer_syntax_uid == mr.file_meta.TransferSyntaxUID
    with compressing.blobs.open(stored_ct.blob_key) as fh:
        back = pydicom.dcmread(fh)
    assert back.file_meta.TransferSyntaxUID == JPEG2000_LOSSLESS
    assert np.array_equal(back.pixel_array, ct.pixel_array)  # lossless
    assert stored_ct.blob_size < len(ct.PixelData)  # and smaller


def test_malformed_policy_is_a_configuration_error() -> None:
    for value in ("CT", "CT=jpeg", "=rle"):
        with pytest.raises(ConfigError, match="MINIPACS_COMPRESS_ON_INGEST"):
            Settings.from_mapping({"compress_on_ingest": value})
    assert Settings.from_mapping({"compress_on_ingest": "ct=rle, MR=1.2.840.10008.1.2.4.80"}).compression_policy == {
        "CT": "1.2.840.10008.1.2.5", "MR": "1.2.840.10008.1.2.4.80"}
