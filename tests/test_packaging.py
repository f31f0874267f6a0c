"""What ships around the code: the CLI entry point, docker-compose.yml, the import contracts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_huren_cli_lists_its_commands() -> None:
    """`huren --help` names demo, serve, simulate and seed."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("demo", "serve", "simulate", "seed"):
        assert command in out


def test_simulate_rejects_a_bad_fault_flag() -> None:
    """A malformed --slow is refused with a message, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "simulate", "--slow", "F001"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--slow expects FACILITY=MILLISECONDS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_simulate_without_seed_data_says_what_to_do(tmp_path: Path) -> None:
    """No seed in the data dir: a one-line error naming `huren seed`."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(tmp_path), "simulate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "huren seed" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_registry_file_is_refused_at_start_up(tmp_path: Path) -> None:
    """The gateway refuses to start on a registry that does not validate, naming entry and field."""
    bad = tmp_path / "facilities.json"
    bad.write_text('{"version": "1", "city": "x", "alliances": [], "facilities": [{"id": "F001"}]}')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(tmp_path), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HUREN_REGISTRY_PATH": str(bad), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "entry F001 field 'alliances'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_recognition_catalogue_is_refused_at_start_up(tmp_path: Path) -> None:
    """A catalogue with a negative validity window does not start the gateway; the message
    names the item."""
    catalogue = json.loads((ROOT / "seeds" / "recognition.json").read_text(encoding="utf-8"))
    catalogue["items"][3]["validity_days"] = -7
    bad = tmp_path / "recognition.json"
    bad.write_text(json.dumps(catalogue, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(tmp_path), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HUREN_RECOGNITION_CATALOGUE_PATH": str(bad), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    code = catalogue["items"][3]["code"]
    assert f"items[3] ({code}): validity_days must be a positive" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_file_is_accepted() -> None:
    """`docker-compose config` accepts the file: gateway, simulator, Redis, PostgreSQL."""
    out = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    for service in ("gateway:", "simulator:", "redis:", "postgres:"):
        assert service in out
    assert "HUREN_DATABASE_URL: postgresql://" in out and "HUREN_REDIS_URL: redis://" in out


def test_import_contracts_hold() -> None:
    """DESIGN.md's rules of the house, as import-linter contracts, are kept."""
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_huren_seed_writes_a_deterministic_seed(tmp_path: Path) -> None:
    """`huren seed --patients N --seed S` writes the manifest; the same call twice is identical."""
    for run in ("a", "b"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "--data-dir",
                str(tmp_path / run),
                "seed",
                "--patients",
                "3",
                "--seed",
                "5",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    a, b = (json.loads((tmp_path / r / "seed" / "manifest.json").read_text()) for r in "ab")
    assert a == b and a["patients"] == 3 and a["seed"] == 5
    assert (tmp_path / "a" / "seed" / "patients.json").read_bytes() == (
        tmp_path / "b" / "seed" / "patients.json"
    ).read_bytes()


def test_huren_demo_comes_up_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """The main job: seeds, starts the city and the gateway, /readyz says all reachable, and
    SIGINT stops every process (run on shifted ports so it can sit beside the test city)."""
    registry = json.loads((ROOT / "seeds" / "facilities.json").read_text(encoding="utf-8"))
    for f in registry["facilities"]:
        for system in (f["imaging"], f["lab"]):
            if "url" in system:
                system["url"] = re.sub(
                    r":(\d+)/", lambda m: f":{int(m.group(1)) + 3000}/", system["url"]
                )
            if "port" in system:
                system["port"] += 3000
    shifted = tmp_path / "facilities.json"
    shifted.write_text(json.dumps(registry, ensure_ascii=False), encoding="utf-8")
    port = free_port()
    env = {**os.environ, "HUREN_REGISTRY_PATH": str(shifted), "HUREN_MLLP_PORT": str(free_port())}
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "--data-dir",
            str(tmp_path / "data"),
            "--log-level",
            "WARNING",
            "demo",
            "--patients",
            "5",
            "--port",
            str(port),
            "--dimse-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert demo.stdout is not None
        out = ""
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything" not in out and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            out += line
        assert f"http://127.0.0.1:{port}/readyz" in out, out
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as resp:
            ready = json.loads(resp.read())
        assert ready["status"] == "ready" and len(ready["facilities"]) == 111
        token = next(line.split()[-1] for line in out.splitlines() if "clinician token" in line)
        patient = out.split("/dicomweb/studies?PatientID=", 1)[1].split("'", 1)[0]
        url = f"http://127.0.0.1:{port}/dicomweb/studies?PatientID={patient}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            studies = json.loads(resp.read())
        # The demo's doctor sees the resident's studies at more than one facility.
        assert len({s["00111001"]["Value"][0] for s in studies}) > 1
        # The findscu line it prints works as printed: the same studies over DIMSE, each with
        # its holder and verdict in the HUREN block.
        command = out[out.index("findscu ") :].split("\n\n", 1)[0].replace("\\\n", " ")
        found = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
        said = found.stdout + found.stderr
        assert found.returncode == 0, said
        holders = set(re.findall(r"\(0011,1001\) LO \[(F\d{3})", said))
        assert holders == {s["00111001"]["Value"][0] for s in studies}, said
        assert said.count("(0011,1003) CS [") == len(studies), said
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    # The simulated city went with it: its first facility's port is free again.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 21001)) != 0
