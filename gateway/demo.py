"""`huren demo`: the whole city on one machine, with no external service.

Seeds the data dir if it has no seed, starts the simulated city in a child process (its own
CPU, as the real facilities would be), starts the gateway, prints the contract table's URLs,
and on Ctrl-C stops both cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass

from .config import Settings
from .core import open_core
from .registry import load_registry
from .seed_import import import_seed
from .server import start, wait_for_signal
from .share_cli import share_lines
from .tokens import dev_keys, mint

SIM_READY_TIMEOUT = 180.0


async def run_demo(settings: Settings, *, patients: int, seed: int, latency_ms: float) -> int:
    from seeds.generator import generate, seed_exists

    t0 = time.monotonic()
    if not seed_exists(settings.data_dir):
        print(f"seeding {patients} residents into {settings.data_dir} …", flush=True)
        await asyncio.to_thread(generate, settings.data_dir, patients=patients, seed=seed)
    doctor = _demo_clinician(settings)
    async with open_core(settings, probe=False) as core:
        await import_seed(core.store, core.archive, core.registry, settings.data_dir)
        # The resident's cloud-film link, as a records office prints it on a report.
        link = await share_lines(
            core,
            settings,
            patient=doctor.patient,
            study=None,
            facility=None,
            visit_date=None,
            days=None,
            second_factor="id4",
            created_by="huren demo",
        )

    sim = await _start_simulator(settings, latency_ms)
    try:
        runner = await start(settings)
        try:
            _print_urls(settings, time.monotonic() - t0, doctor, link)
            await wait_for_signal()
            print("stopping …", flush=True)
        finally:
            await runner.cleanup()
    finally:
        await _stop(sim)
    return 0


async def _start_simulator(settings: Settings, latency_ms: float) -> asyncio.subprocess.Process:
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "--data-dir",
        str(settings.data_dir),
        "--log-level",
        "WARNING",
        "simulate",
        "--latency-ms",
        str(latency_ms),
        "--move-dest",
        f"{settings.ae_title}={settings.host}:{settings.dimse_port}",
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(SIM_READY_TIMEOUT):
            while line := await proc.stdout.readline():
                if line.startswith(b"simulator ready"):
                    print(line.decode().strip(), flush=True)
                    return proc
    except TimeoutError:
        pass
    await _stop(proc)
    raise SystemExit("huren demo: the simulated city did not start (see its log above)")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass(frozen=True, slots=True)
class DemoClinician:
    facility: str
    token: str
    patient: str  # a resident under the facility's care, with records elsewhere too
    workstation: str  # an AE title of the facility's: the DIMSE SCP takes only those


def _demo_clinician(settings: Settings) -> DemoClinician:
    """A clinician token for the facility of a resident known at several facilities."""
    patients = json.loads((settings.data_dir / "seed" / "patients.json").read_text("utf-8"))
    resident = max(patients, key=lambda p: len(p["records"]))
    facility = sorted(resident["records"])[0]
    pem, jwks = dev_keys(settings.data_dir)
    token = mint(
        pem,
        jwks["keys"][0]["kid"],
        subject=f"demo-doctor-{facility}",
        role="clinician",
        facility=facility,
        purpose_of_use="TREAT",
        name="演示医生",
    )
    workstations = load_registry(settings.registry_path)[facility].workstations
    ae = workstations[0] if workstations else f"{facility}WS"  # registered ones only answer
    return DemoClinician(facility, token, resident["national_id"], ae)


def _print_urls(settings: Settings, seconds: float, doctor: DemoClinician, link: list[str]) -> None:
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"""
Huren is up ({seconds:.1f} s). The city's 111 facilities are simulated on loopback.

  readiness          {base}/readyz
  health, metrics    {base}/healthz   {base}/metrics
  DICOMweb           {base}/dicomweb/studies
  one facility       {base}/facilities/F001/dicomweb/studies
  DIMSE SCP          AE {settings.ae_title} on {settings.host}:{settings.dimse_port}
  HL7 v2 (MLLP)      {settings.host}:{settings.mllp_port}
  data dir           {settings.data_dir}

The resident's cloud film (open it on a phone; the ID number ends in {doctor.patient[-4:]}):
  {link[0]}
{chr(10).join(link[1:])}

A clinician of {doctor.facility} (`huren token --role clinician --facility F001` mints more):
  clinician token    {doctor.token}

Try:  curl -s {base}/readyz | python3 -m json.tool | head
      TOKEN=<the clinician token above>
      curl -s -H "Authorization: Bearer $TOKEN" \
           '{base}/dicomweb/studies?PatientID={doctor.patient}'
      curl -s -H "Authorization: Bearer $TOKEN" \
           '{base}/fhir/Observation?patient.identifier={doctor.patient}'
      # before ordering: the resident's priors, each with its recognition (互认) verdict
      curl -s -H "Authorization: Bearer $TOKEN" \
           '{base}/fhir/$recognized-priors?patient={doctor.patient}&_all=true'
      # the same studies over DIMSE, from the clinician's workstation, with their verdicts
      findscu -S -aet {doctor.workstation} -aec {settings.ae_title} -k QueryRetrieveLevel=STUDY \
              -k PatientID={doctor.patient} -k StudyInstanceUID -k StudyDate -k ModalitiesInStudy \
              -k "(0011,0010)=HUREN" -k "(0011,1001)" -k "(0011,1003)" -k "(0011,1006)" \
              {settings.host} {settings.dimse_port}

Ctrl-C stops everything.""",
        flush=True,
    )
