"""The Orthanc fixture is a real PACS for clients nobody here wrote: dicomweb-client over
DICOMweb, dcmtk's findscu and getscu over DIMSE."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.orthanc import OrthancServer, require_orthanc, start_orthanc, stop_orthanc
from tests.ports import free_port

needs_dcmtk = pytest.mark.skipif(
    shutil.which("findscu") is None, reason="dcmtk is not installed (scripts/test installs it)"
)
INSTANCES = 3


@dataclass
class Study:
    uid: str
    patient_id: str
    files: list[Path]


def make_ct(path: Path, study_uid: str, series_uid: str, number: int) -> Dataset:
    """A small CT image (8x8 uint16) saved as a DICOM file in Explicit VR Little Endian."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "HUREN-ORTHANC-1"
    ds.PatientName = "Test^Orthanc"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC-ORTHANC-1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(64, dtype=np.uint16) * (number + 1)).reshape(8, 8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.fixture(scope="module")
def study(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """One CT study of a few instances, generated here and uploaded to Orthanc."""
    folder = tmp_path_factory.mktemp("orthanc-study")
    study_uid, series_uid = generate_uid(), generate_uid()
    files = [folder / f"ct{n}.dcm" for n in range(1, INSTANCES + 1)]
    for n, path in enumerate(files, start=1):
        make_ct(path, study_uid, series_uid, n)
    assert orthanc.upload(files) == INSTANCES
    return Study(study_uid, "HUREN-ORTHANC-1", files)


def test_upload_counts_already_stored_instances(orthanc: OrthancServer, study: Study) -> None:
    """Uploading the same files again counts them as stored (Orthanc says AlreadyStored)."""
    assert orthanc.upload(study.files[:1]) == 1


def test_dicomweb_client_searches_and_retrieves(orthanc: OrthancServer, study: Study) -> None:
    """QIDO-RS finds the study; WADO-RS returns each instance with identical PixelData."""
    client = DICOMwebClient(url=orthanc.dicomweb_url)
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study.uid})
    assert [Dataset.from_json(s).StudyInstanceUID for s in found] == [study.uid]
    assert Dataset.from_json(found[0]).PatientID == study.patient_id
    for path in study.files:
        want = pydicom.dcmread(path)
        got = client.retrieve_instance(
            want.StudyInstanceUID, want.SeriesInstanceUID, want.SOPInstanceUID
        )
        assert got.SOPInstanceUID == want.SOPInstanceUID
        assert got.PixelData == want.PixelData


def _dcmtk(tool: str, orthanc: OrthancServer, keys: list[str], out: Path, *extra: str) -> None:
    """Run a dcmtk Study Root Q/R tool as calling AE HUREN against Orthanc."""
    args = [tool, "-S", "-aet", "HUREN", "-aec", orthanc.aet]
    args += [a for k in keys for a in ("-k", k)]
    args += [*extra, "-od", str(out), "127.0.0.1", str(orthanc.dicom_port)]
    subprocess.run(args, check=True, timeout=60, capture_output=True)


@needs_dcmtk
def test_findscu_finds_the_study(orthanc: OrthancServer, study: Study, tmp_path: Path) -> None:
    """C-FIND at STUDY level from an AE Orthanc does not know finds the study."""
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}", "PatientID"]
    _dcmtk("findscu", orthanc, keys, tmp_path, "-X")
    answers = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert [(a.StudyInstanceUID, a.PatientID) for a in answers] == [(study.uid, study.patient_id)]


@needs_dcmtk
def test_getscu_retrieves_the_study(orthanc: OrthancServer, study: Study, tmp_path: Path) -> None:
    """C-GET of the study returns every instance with identical PixelData."""
    keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}"]
    _dcmtk("getscu", orthanc, keys, tmp_path)
    got = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, tmp_path.iterdir())}
    assert len(got) == INSTANCES
    for path in study.files:
        want = pydicom.dcmread(path)
        assert got[want.SOPInstanceUID].PixelData == want.PixelData


@needs_dcmtk
def test_movescu_to_a_configured_modality(study: Study, tmp_path: Path) -> None:
    """C-MOVE reaches a destination given in dicom_modalities; an unknown one is refused."""
    require_orthanc()
    port = free_port()
    server = start_orthanc(
        tmp_path / "orthanc", dicom_modalities={"huren": ("HUREN", "127.0.0.1", port)}
    )
    try:
        assert server.upload(study.files) == INSTANCES
        keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.uid}"]
        received = tmp_path / "received"
        received.mkdir()
        _dcmtk("movescu", server, keys, received, "-aem", "HUREN", "+P", str(port))
        got = {ds.SOPInstanceUID for ds in map(pydicom.dcmread, received.iterdir())}
        assert got == {pydicom.dcmread(p).SOPInstanceUID for p in study.files}
        with pytest.raises(subprocess.CalledProcessError):
            _dcmtk("movescu", server, keys, received, "-aem", "NOWHERE")
    finally:
        stop_orthanc(server)
