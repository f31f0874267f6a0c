"""The simulated city: every facility of the registry served on loopback as a real system.

Each facility with a PACS or lab system gets its own ports, as a real hospital would have its
own host: DICOMweb and FHIR over HTTP on the port of its registry URL, DIMSE through pynetdicom
on its registry port. Faults are set per facility at run time (`set_fault`, or the control
API on ``control_port``): extra latency, down (the port refuses connections: the listener is
closed and open connections are dropped) or garbage (the port answers bytes that are not the
protocol). All of it runs in one process: aiohttp on one loop, pynetdicom in its own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

from adapters.dicom_index import DicomIndex
from adapters.types import DicomWebEndpoint, DimseEndpoint, FhirEndpoint, Hl7v2Feed
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.registry import Facility, Registry, load_registry

from . import sim_dicomweb, sim_fhir
from .faults import Fault, Mode
from .sim_dimse import DimsePacs

log = logging.getLogger(__name__)

GARBAGE = b"\x00\xffthis is not the protocol you are looking for\r\n<html>"


@dataclass(slots=True)
class SimFacility:
    facility: Facility
    index: DicomIndex | None = None
    fhir: sim_fhir.FhirStore | None = None
    http_port: int | None = None
    runner: web.AppRunner | None = None
    dimse: DimsePacs | None = None
    junk_server: asyncio.Server | None = None
    fault: Fault = field(default_factory=Fault)


class Simulator:
    def __init__(
        self,
        registry: Registry,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        latency_ms: float = 0.0,
        faults: Mapping[str, Fault] | None = None,
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        control_port: int | None = None,
    ) -> None:
        self.registry = registry
        self.data_dir = data_dir
        self.host = host
        self.latency_ms = latency_ms
        self.move_destinations = dict(move_destinations or {"HUREN": ("127.0.0.1", 11112)})
        self.control_port = control_port
        self.facilities: dict[str, SimFacility] = {}
        self._initial_faults = dict(faults or {})
        self._control: web.AppRunner | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        started = time.monotonic()
        seed = self.data_dir / "seed"
        await asyncio.to_thread(self._load, seed)
        for sim in self.facilities.values():
            sim.fault = self._initial_faults.get(sim.facility.id, Fault())
            await self._bring_up(sim)
        if self.control_port is not None:
            self._control = web.AppRunner(self._control_app(), access_log=None)
            await self._control.setup()
            await web.TCPSite(self._control, self.host, self.control_port).start()
        log.info(
            "simulator up",
            extra={
                "facilities": len(self.facilities),
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    async def stop(self) -> None:
        for sim in self.facilities.values():
            await self._bring_down(sim)
        if self._control is not None:
            await self._control.cleanup()

    def _load(self, seed: Path) -> None:
        """Read every facility's seed data (blocking; runs in a thread)."""
        for f in self.registry:
            sim = SimFacility(f)
            if isinstance(f.imaging, DicomWebEndpoint | DimseEndpoint):
                sim.index = DicomIndex()
                for root in (seed / "dicom" / f.id, self._stow_dir(f.id)):
                    if root.is_dir():
                        sim.index.add_tree(root)
            if isinstance(f.lab, FhirEndpoint):
                sim.fhir = sim_fhir.FhirStore.load(seed / "fhir" / f"{f.id}.ndjson")
            if isinstance(f.imaging, DicomWebEndpoint):
                sim.http_port = URL(f.imaging.url).port
            elif isinstance(f.lab, FhirEndpoint):
                sim.http_port = URL(f.lab.url).port
            if sim.index is not None or sim.fhir is not None:
                self.facilities[f.id] = sim

    def _stow_dir(self, facility_id: str) -> Path:
        return self.data_dir / "sim" / facility_id / "received"

    # -- faults ----------------------------------------------------------------------------

    async def set_fault(
        self, facility_id: str, mode: Mode, latency_ms: float | None = None
    ) -> None:
        sim = self.facilities[facility_id]
        was = sim.fault.mode
        sim.fault = Fault(mode, latency_ms)
        if mode is not was:
            await self._bring_down(sim)
            await self._bring_up(sim)

    async def reset_faults(self) -> None:
        for fid, sim in self.facilities.items():
            if sim.fault != Fault():
                await self.set_fault(fid, Mode.OK)

    def latency(self, facility_id: str) -> float:
        fault = self.facilities[facility_id].fault
        ms = self.latency_ms if fault.latency_ms is None else fault.latency_ms
        return ms / 1000.0

    async def _bring_up(self, sim: SimFacility) -> None:
        f = sim.facility
        if sim.fault.mode is Mode.DOWN:
            return
        if sim.http_port is not None:
            if sim.fault.mode is Mode.GARBAGE:
                sim.junk_server = await _junk_server(self.host, sim.http_port)
            else:
                sim.runner = web.AppRunner(self._facility_app(sim), access_log=None)
                await sim.runner.setup()
                await web.TCPSite(sim.runner, self.host, sim.http_port, reuse_address=True).start()
        if isinstance(f.imaging, DimseEndpoint) and sim.index is not None:
            if sim.fault.mode is Mode.GARBAGE:
                sim.junk_server = await _junk_server(self.host, f.imaging.port)
            else:
                sim.dimse = DimsePacs(
                    f.imaging.ae_title,
                    sim.index,
                    self._stow_dir(f.id),
                    latency=lambda fid=f.id: self.latency(fid),  # type: ignore[misc]
                    move_destinations=self.move_destinations,
                )
                await sim.dimse.start(self.host, f.imaging.port)

    async def _bring_down(self, sim: SimFacility) -> None:
        if sim.runner is not None:
            await sim.runner.cleanup()  # closes the listener and every open connection
            sim.runner = None
        if sim.dimse is not None:
            await sim.dimse.stop()
            sim.dimse = None
        if sim.junk_server is not None:
            sim.junk_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sim.junk_server.wait_closed(), 1)
            sim.junk_server = None

    # -- HTTP apps -------------------------------------------------------------------------

    def _facility_app(self, sim: SimFacility) -> web.Application:
        fid = sim.facility.id

        @web.middleware
        async def latency(request: web.Request, handler: Any) -> web.StreamResponse:
            delay = self.latency(fid)
            if delay > 0:
                await asyncio.sleep(delay)
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[latency], client_max_size=1024**3)
        if isinstance(sim.facility.imaging, DicomWebEndpoint) and sim.index is not None:
            sim_dicomweb.add_routes(app, sim.index, self._stow_dir(fid))
        if sim.fhir is not None:
            sim_fhir.add_routes(app, sim.fhir, sim_fhir.capability_statement(sim.facility.name_en))
        return app

    def _control_app(self) -> web.Application:
        async def state(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "latency_ms": self.latency_ms,
                    "facilities": {fid: s.fault.as_json() for fid, s in self.facilities.items()},
                }
            )

        async def put_fault(request: web.Request) -> web.Response:
            fid = request.match_info["fid"]
            if fid not in self.facilities:
                return web.json_response({"error": f"unknown facility {fid}"}, status=404)
            try:
                body = await request.json()
                mode = Mode(body.get("mode", "ok"))
                latency = body.get("latency_ms")
                latency_ms = None if latency is None else float(latency)
            except (ValueError, TypeError, AttributeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            await self.set_fault(fid, mode, latency_ms)
            return web.json_response({fid: self.facilities[fid].fault.as_json()})

        async def reset(request: web.Request) -> web.Response:
            await self.reset_faults()
            return web.json_response({"reset": True})

        async def send_hl7(request: web.Request) -> web.Response:
            fid = request.match_info["fid"]
            target = request.query.get("target", "")
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                return web.json_response({"error": "target=HOST:PORT is required"}, status=400)
            try:
                result = await self.send_lab_feed(fid, host, int(port))
            except KeyError as exc:
                return web.json_response({"error": str(exc)}, status=404)
            return web.json_response(result)

        app = web.Application()
        app.router.add_get("/_sim/state", state)
        app.router.add_put("/_sim/faults/{fid}", put_fault)
        app.router.add_delete("/_sim/faults", reset)
        app.router.add_post("/_sim/hl7/{fid}", send_hl7)
        return app

    async def send_lab_feed(self, facility_id: str, host: str, port: int) -> dict[str, Any]:
        """Push a facility's lab results to an MLLP listener as ORU^R01 messages."""
        from . import hl7_sender  # the feed is optional; keep start-up lean

        f = self.registry[facility_id]
        if not isinstance(f.lab, Hl7v2Feed):
            raise KeyError(f"{facility_id} has no HL7 v2 lab feed")
        messages = await asyncio.to_thread(
            hl7_sender.messages_for_facility,
            self.data_dir / "seed" / "fhir" / f"{facility_id}.ndjson",
            sending_application=f.lab.sending_application,
            sending_facility=f.lab.sending_facility,
        )
        result = await hl7_sender.send_feed(host, port, messages)
        return dataclasses.asdict(result)


async def _junk_server(host: str, port: int) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1024), 2)
            writer.write(GARBAGE)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, host, port, reuse_address=True)


async def run_simulator(
    settings: Settings,
    *,
    latency_ms: float,
    faults: Mapping[str, Fault],
    control_port: int | None,
    move_destinations: Mapping[str, tuple[str, int]] | None = None,
) -> None:
    """`huren simulate`: serve the city until SIGINT/SIGTERM."""
    from gateway.server import wait_for_signal

    seed = settings.data_dir / "seed"
    if not (seed / "manifest.json").exists():
        raise ConfigError(f"no seed data in {seed}: run `huren seed` first")
    registry = await asyncio.to_thread(load_registry, settings.registry_path)
    sim = Simulator(
        registry,
        settings.data_dir,
        latency_ms=latency_ms,
        faults=faults,
        control_port=control_port,
        move_destinations=move_destinations,
    )
    await sim.start()
    # One line on stdout that a parent process (huren demo, tests, bench) waits for.
    print(f"simulator ready: {len(sim.facilities)} facilities", flush=True)
    try:
        await wait_for_signal()
    finally:
        await sim.stop()
