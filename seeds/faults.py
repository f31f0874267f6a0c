"""Failure injection for the simulated facilities: slow, down, or answering garbage."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Mode(enum.Enum):
    OK = "ok"
    DOWN = "down"  # the port refuses connections
    GARBAGE = "garbage"  # the port answers bytes that are not the protocol's


@dataclass(slots=True)
class Fault:
    mode: Mode = Mode.OK
    latency_ms: float | None = None  # None: the simulator's base latency

    def as_json(self) -> dict[str, object]:
        return {"mode": self.mode.value, "latency_ms": self.latency_ms}


_SPEC = re.compile(r"^(F\d{3})(?:=(\d+(?:\.\d+)?))?$")


def parse_fault_flags(*, slow: list[str], down: list[str], garbage: list[str]) -> dict[str, Fault]:
    """``--slow F001=500 --down F002 --garbage F003`` -> {facility: Fault}."""
    faults: dict[str, Fault] = {}
    for spec in slow:
        m = _SPEC.match(spec)
        if not m or m.group(2) is None:
            raise ValueError(f"--slow expects FACILITY=MILLISECONDS (e.g. F001=500), got {spec!r}")
        faults.setdefault(m.group(1), Fault()).latency_ms = float(m.group(2))
    for flag, specs, mode in (("--down", down, Mode.DOWN), ("--garbage", garbage, Mode.GARBAGE)):
        for spec in specs:
            m = _SPEC.match(spec)
            if not m or m.group(2) is not None:
                raise ValueError(f"{flag} expects a facility id (e.g. F002), got {spec!r}")
            faults.setdefault(m.group(1), Fault()).mode = mode
    return faults
