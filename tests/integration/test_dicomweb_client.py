"""Interop with the dicomweb-client package against a real `minipacs serve`, on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from requests.exceptions import HTTPError
from pydicom.data import get_testdata_file

from pacs.config import Settings
from tests.support.factories import make_series
from tests.support.server import create_user, running_server

pytestmark = [
    # requests/urllib3 and dicomweb-client internals may warn on newer Pythons
    pytest.mark.filterwarnings("ignore::DeprecationWarning:dicomweb_client.*"),
]


@pytest.fixture
def web(settings: Settings) -> Iterator[DICOMwebClient]:
    """dicomweb-client with a technologist's bearer token (store, read, delete)."""
    _, token = create_user(settings, "technologist")
    with running_server(settings) as url:
        yield DICOMwebClient(url=f"{url}/dicom-web", headers={"Authorization": f"Bearer {token}"})


def test_credentials_are_required_and_basic_works(settings: Settings) -> None:
    name, _ = create_user(settings, "radiologist", password="correct horse battery")
    with running_server(settings) as url:
        anonymous = DICOMwebClient(url=f"{url}/dicom-web")
        with pytest.raises(HTTPError) as refused:
            anonymous.search_for_studies()
        assert refused.value.response.status_code == 401
        wrong = DICOMwebClient(url=f"{url}/dicom-web", session=create_session_from_user_pass(name, "wrong password"))
        with pytest.raises(HTTPError) as refused:
            wrong.search_for_studies()
        assert refused.value.response.status_code == 401
        basic = DICOMwebClient(
            url=f"{url}/dicom-web", session=create_session_from_user_pass(name, "correct horse battery")
        )
        assert basic.search_for_studies() == []
        # A radiologist reads but does not store.
        with pytest.raises(HTTPError) as forbidden:
            basic.store_instances(make_series(1))
        assert forbidden.value.response.status_code == 403


def test_store_search_retrieve_delete(web: DICOMwebClient) -> None:
    series = make_series(4, PatientName="Interop^Test", PatientID="IOP-1", AccessionNumber="IOP-ACC")
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    response = web.store_instances(series)
    assert len(response.ReferencedSOPSequence) == 4
    assert "FailedSOPSequence" not in response

    studies = web.search_for_studies(search_filters={"PatientName": "interop*"}, fields=["StudyDescription"])
    assert [s["0020000D"]["Value"][0] for s in studies] == [study]
    assert studies[0]["00081030"]["Value"] == ["CT HEAD"]
    assert len(web.search_for_instances(study_instance_uid=study)) == 4

    retrieved = web.retrieve_instance(study, series_uid, series[2].SOPInstanceUID)
    assert retrieved.SOPInstanceUID == series[2].SOPInstanceUID
    assert np.array_equal(retrieved.pixel_array, series[2].pixel_array)

    [frame] = web.retrieve_instance_frames(study, series_uid, series[1].SOPInstanceUID, frame_numbers=[1])
    assert frame == series[1].PixelData

    metadata = web.retrieve_series_metadata(study, series_uid)
    assert sorted(m["00200013"]["Value"][0] for m in metadata) == [1, 2, 3, 4]
    bulk_uri = metadata[0]["7FE00010"]["BulkDataURI"]
    [pixels] = web.retrieve_bulkdata(bulk_uri)
    by_uid = {ds.SOPInstanceUID: ds for ds in series}
    assert pixels == by_uid[metadata[0]["00080018"]["Value"][0]].PixelData

    whole = web.retrieve_study(study)
    assert sorted(ds.SOPInstanceUID for ds in whole) == sorted(by_uid)

    web.delete_study(study)
    assert web.search_for_studies(search_filters={"StudyInstanceUID": study}) == []


def test_compressed_file_keeps_its_syntax(web: DICOMwebClient) -> None:
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm", download=False))
    web.store_instances([ds])
    back = web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert back.PixelData == ds.PixelData
    frames = web.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert frames[0].rstrip(b"\x00") == next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)).rstrip(b"\x00")


def test_rendered_and_decoded_frames(web: DICOMwebClient) -> None:
    """dicomweb-client's rendered calls, and frames of a compressed instance asked as raw pixels."""
    import io

    from PIL import Image

    series = make_series(2, PatientID="IOP-R")
    web.store_instances(series)
    ds = series[0]
    jpeg = web.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                          media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).size == (ds.Columns, ds.Rows)
    png = web.retrieve_instance_frames_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                                frame_numbers=[1], media_types=("image/png",),
                                                params={"window": "0,2000,linear"})
    assert Image.open(io.BytesIO(png)).format == "PNG"
    rendered_series = web.retrieve_series_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                   media_types=("image/jpeg",))
    assert rendered_series  # a multipart of both instances' renderings

    j2k = pydicom.dcmread(get_testdata_file("JPEG2000.dcm", download=False))
    web.store_instances([j2k])
    [frame] = web.retrieve_instance_frames(
        j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID, frame_numbers=[1],
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )
    assert frame == j2k.pixel_array.astype(j2k.pixel_array.dtype.newbyteorder("<")).tobytes()
