"""A real upstream PACS for tests: Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) in a
child process on free loopback ports, with its DICOMweb plugin, storage in a temporary dir.

Outside CI a missing Orthanc skips the tests that use it; with CI=true it fails them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

ORTHANC_BIN = Path(shutil.which("Orthanc") or "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AET = "ORTHANC"
READY_TIMEOUT = 60.0  # seconds for Orthanc to answer GET /system


@dataclass
class OrthancServer:
    http_port: int
    dicom_port: int
    aet: str
    base_url: str  # http://127.0.0.1:PORT (REST API)
    dicomweb_url: str  # base_url + "/dicom-web"
    process: subprocess.Popen[bytes]
    storage_dir: Path
    log_path: Path

    def upload(self, paths: Iterable[Path]) -> int:
        """POST each DICOM file to the REST API's ``/instances``; how many Orthanc now holds
        (``Success`` or ``AlreadyStored``). Any HTTP error raises."""
        stored = 0
        for path in paths:
            req = urllib.request.Request(
                f"{self.base_url}/instances",
                data=Path(path).read_bytes(),
                headers={"Content-Type": "application/dicom"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=60) as resp:
                answer = json.loads(resp.read())
            if answer.get("Status") in ("Success", "AlreadyStored"):
                stored += 1
        return stored

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def orthanc_config(
    workdir: Path,
    http_port: int,
    dicom_port: int,
    dicom_modalities: dict[str, tuple[str, str, int]] | None = None,
    *,
    check_called_aet: bool = False,
) -> dict[str, object]:
    """The configuration of a throwaway Orthanc (1.10) on loopback ports, files in workdir.

    ``check_called_aet``: refuse associations that call it by another AE title, as most
    hospital PACSs do (the shared test Orthanc answers to any)."""
    storage = workdir / "storage"
    return {
        "Name": "huren-test-orthanc",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        # Loopback clients only, no password: localhost is all the tests use.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpDescribeErrors": True,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": check_called_aet,
        "DicomCheckModalityHost": False,
        # Unknown calling AEs (e.g. "HUREN", dcmtk) may query and retrieve; C-MOVE still
        # needs its destination among DicomModalities.
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {
            name: [aet, host, port] for name, (aet, host, port) in (dicom_modalities or {}).items()
        },
        "DicomModalitiesInDatabase": False,
        # Close Orthanc's own SCU associations (C-MOVE sub-operations) at once.
        "DicomAssociationCloseDelay": 0,
        "StableAge": 1,
        "ConcurrentJobs": 2,
        "SaveJobs": False,
        "OverwriteInstances": False,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def start_orthanc(
    workdir: Path,
    *,
    dicom_modalities: dict[str, tuple[str, str, int]] | None = None,
    check_called_aet: bool = False,
) -> OrthancServer:
    """Start Orthanc with a config written into workdir; return once ``GET /system`` answers.

    dicom_modalities: name -> (AE title, host, port), the peers Orthanc knows (C-MOVE
    destinations).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    dicom_port = free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = orthanc_config(
        workdir, http_port, dicom_port, dicom_modalities, check_called_aet=check_called_aet
    )
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log_path = workdir / "orthanc.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(ORTHANC_BIN), str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    base_url = f"http://127.0.0.1:{http_port}"
    server = OrthancServer(
        http_port=http_port,
        dicom_port=dicom_port,
        aet=ORTHANC_AET,
        base_url=base_url,
        dicomweb_url=f"{base_url}/dicom-web",
        process=proc,
        storage_dir=workdir / "storage",
        log_path=log_path,
    )
    try:
        _wait_ready(server)
    except BaseException:
        stop_orthanc(server)
        raise
    return server


def _wait_ready(server: OrthancServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with {server.process.returncode} while starting:\n"
                f"{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.base_url}/system", timeout=5) as resp:
                system = json.loads(resp.read())
            # The DICOM server is up too (Orthanc starts it before the HTTP server).
            with socket.create_connection(("127.0.0.1", server.dicom_port), timeout=5):
                pass
            if system.get("DicomAet") == server.aet:
                return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(
        f"Orthanc did not answer GET /system within {READY_TIMEOUT:.0f}s ({last!r}):\n"
        f"{server.log_tail()}"
    )


def stop_orthanc(server: OrthancServer) -> None:
    """SIGTERM (Orthanc shuts down cleanly), then SIGKILL after 30 s."""
    proc = server.process
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if not os.access(ORTHANC_BIN, os.X_OK):
        return f"Orthanc is not installed ({ORTHANC_BIN}; scripts/test installs it)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN})"
    return None


def require_orthanc() -> None:
    """Skip the calling test if Orthanc is missing; with CI=true fail it instead."""
    reason = orthanc_missing()
    if reason is not None:
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"{reason} (CI is set: a missing test server fails the run)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A real Orthanc PACS (DIMSE and DICOMweb), shared by the session; AE title "ORTHANC"."""
    require_orthanc()
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        stop_orthanc(server)


@pytest.fixture(scope="session")
def strict_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc that checks the called AE title, as most hospital PACSs do."""
    require_orthanc()
    server = start_orthanc(tmp_path_factory.mktemp("strict-orthanc"), check_called_aet=True)
    try:
        yield server
    finally:
        stop_orthanc(server)
