"""The simulated city as a test fixture: seed data generated once, the simulator in a child
process on the registry's loopback ports, faults set through its control API."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Settings
from seeds.generator import generate
from tests.ports import free_port

#: The aiohttp test client the gateway fixtures hand out.
Client = TestClient[web.Request, web.Application]

CITY_PATIENTS = 12
CITY_SEED = 7
READY_TIMEOUT = 120.0


@dataclass
class City:
    data_dir: Path
    control_url: str
    process: subprocess.Popen[bytes]

    def fault(self, facility_id: str, mode: str = "ok", latency_ms: float | None = None) -> None:
        body = json.dumps({"mode": mode, "latency_ms": latency_ms}).encode()
        req = urllib.request.Request(
            f"{self.control_url}/_sim/faults/{facility_id}", data=body, method="PUT"
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.control_url}/_sim/faults", method="DELETE")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200

    def studies(self) -> list[dict[str, str]]:
        data: list[dict[str, str]] = json.loads(
            (self.data_dir / "seed" / "studies.json").read_text(encoding="utf-8")
        )
        return data

    def patients(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(
            (self.data_dir / "seed" / "patients.json").read_text(encoding="utf-8")
        )
        return data


def huren_command(data_dir: Path, *args: str) -> list[str]:
    """The `huren` CLI of this interpreter, quiet, on a data dir."""
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "--data-dir",
        str(data_dir),
        "--log-level",
        "WARNING",
        *args,
    ]


def start_simulator(
    data_dir: Path, *extra: str, latency_ms: float = 0.0
) -> tuple[subprocess.Popen[bytes], int]:
    control = free_port()
    cmd = huren_command(
        data_dir,
        "simulate",
        "--latency-ms",
        str(latency_ms),
        "--control-port",
        str(control),
        *extra,
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith(b"simulator ready") or not line:
                break
        if proc.poll() is not None:
            break
    if not line.startswith(b"simulator ready"):
        proc.kill()
        raise RuntimeError(f"simulator did not start (exit {proc.poll()}, said {line!r})")
    return proc, control


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def seeded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("city")
    generate(data_dir, patients=CITY_PATIENTS, seed=CITY_SEED)
    return data_dir


@pytest.fixture(scope="session")
def city(seeded_dir: Path) -> Iterator[City]:
    """The simulated city, shared by the session; faults are reset after each user."""
    proc, control = start_simulator(seeded_dir)
    try:
        yield City(seeded_dir, f"http://127.0.0.1:{control}", proc)
    finally:
        stop_process(proc)


def token(data_dir: Path, role: str = "service", **claims: Any) -> str:
    """A bearer token from the data dir's dev keys (as `huren token` mints them)."""
    from gateway.tokens import dev_keys, mint

    pem, jwks = dev_keys(data_dir)
    claims.setdefault("subject", f"test-{role}")
    if role == "service":  # the tests' backend client reads and stores
        claims.setdefault("scopes", "system/*.cruds")
    return mint(pem, jwks["keys"][0]["kid"], role=role, **claims)  # type: ignore[arg-type]


def bearer(data_dir: Path, role: str = "service", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(data_dir, role, **claims)}"}


@contextlib.asynccontextmanager
async def open_gateway(
    city: City, *, probe: bool = False, role: str = "service", **overrides: Any
) -> AsyncIterator[tuple[TestClient, Settings]]:  # type: ignore[type-arg]
    """The gateway app on a real socket, on the city's data (seed imported), with its DIMSE
    and MLLP listeners on free ports; faults are reset afterwards.

    The client sends a token of ``role`` (a backend service by default). Every request that
    reaches the app is noted, and on the way out the audit trail must hold exactly one record
    of each with its status: the audit's promise, checked on every test that uses this.
    """
    from aiohttp import web

    from gateway.app import build_app
    from gateway.core import open_core
    from gateway.guard import audit_path, is_public
    from gateway.seed_import import import_seed
    from gateway.web import CORE

    values: dict[str, Any] = {
        "data_dir": city.data_dir,
        "federation_deadline": 2.0,
        "breaker_reset": 60,
        "dimse_port": free_port(),
        "mllp_port": free_port(),
        # Tests inject faults between searches: answers must come from the facilities.
        "query_cache_ttl": 0.0,
        **overrides,
    }
    settings = Settings(**values)
    async with open_core(settings, probe=False) as core:
        await import_seed(core.store, core.archive, core.registry, city.data_dir)
    app = build_app(settings, probe=probe)
    seen: list[tuple[str, int]] = []

    @web.middleware
    async def note(request: web.Request, handler: Any) -> web.StreamResponse:
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if not is_public(request.path):
                seen.append((audit_path(request.path), status))

    app.middlewares.insert(0, note)
    started = datetime.now(UTC)
    try:
        async with TestClient(TestServer(app), headers=bearer(city.data_dir, role)) as client:
            yield client, settings
            records = await app[CORE].audit.search(since=started, limit=1_000_000)
            audited = Counter((r.path, r.status) for r in records if r.path.startswith("/"))
            assert audited == Counter(seen), (audited, Counter(seen))
    finally:
        city.reset()
