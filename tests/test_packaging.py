"""What ships around the code: the CLI entry point, docker-compose.yml, the import contracts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
