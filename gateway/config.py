"""Settings, from (lowest to highest precedence) defaults, a TOML file, HUREN_* env, flags.

Each setting's default sits next to it with the reason; `Settings.load` is the one place
that knows the sources.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    #: Where seed data, the SQLite file, the archive and demo keys live.
    data_dir: Path = Path("huren-data")
    host: str = "127.0.0.1"
    #: HTTP port: DICOMweb, FHIR, portal, admin (DESIGN.md contract table).
    port: int = 8080
    #: DIMSE SCP port, AE title HUREN.
    dimse_port: int = 11112
    ae_title: str = "HUREN"
    #: MLLP listener for facilities' HL7 v2 lab feeds (2575: the port IANA lists for HL7).
    mllp_port: int = 2575
    #: None: SQLite file in the data dir. Else a PostgreSQL URL.
    database_url: str | None = None
    #: None: in-process cache. Else a redis:// URL shared by every gateway process.
    redis_url: str | None = None
    #: None: the registry shipped in seeds/.
    registry_path: Path | None = None
    #: None: the ConceptMap of facilities' local lab codes shipped in seeds/.
    lab_codes_path: Path | None = None
    #: None: the recognition catalogue shipped in seeds/ (items, windows, QC, scopes).
    recognition_catalogue_path: Path | None = None
    #: Seconds one federated query may take, all facilities together; answers after this
    #: are dropped and the facility reported as timed out.
    federation_deadline: float = 2.0
    #: Upstream calls in flight at once across all facilities.
    federation_concurrency: int = 64
    #: Consecutive failures that open a facility's breaker, and seconds before one trial.
    breaker_failures: int = 3
    breaker_reset: float = 15.0
    #: Threads for pynetdicom calls and pixel/file work, off the event loop.
    worker_threads: int = 32
    #: Seconds between background reachability probes of every facility (/readyz).
    probe_interval: float = 30.0
    #: C-MOVE destinations the SCP may send to: "AE=host:port,AE2=host:port".
    move_destinations: str = ""
    #: Calling AE titles of the city platform's own systems (routers, archives): they act as
    #: backend services (SMART system scopes), not for one facility. "AE1,AE2".
    trusted_calling_aes: str = ""
    #: Where the keys that sign bearer tokens are: a JWKS file or an http(s) URL of one.
    #: None: the dev key pair in the data dir's keys/, which `huren token` signs with.
    auth_jwks: str | None = None
    #: The issuer (iss) tokens must name. None: "urn:huren:dev", the dev keys' issuer;
    #: required with auth_jwks, so a real provider's tokens are bound to it.
    auth_issuer: str | None = None
    #: The audience (aud) tokens must hold.
    auth_audience: str = "huren"
    log_level: str = "INFO"
    #: "json" (structured, for machines) or "text" (for people at a terminal).
    log_format: str = "json"
    #: Write an audit record of every access before answering. Off only to measure what it
    #: costs (bench/lookups.py): the contract is that it is on.
    audit: bool = True
    #: Give every result the gateway answers its recognition verdict. Off only to measure
    #: what verdicts cost (bench/recognition.py).
    verdicts: bool = True
    #: Days ahead the console, the recognition statistics and the log warn that a facility's
    #: quality-control passes end (after that its results lose the HR mark).
    qc_warning_days: int = 60
    #: Requests a minute per user and per facility (0: no limit); over it, 429.
    rate_limit_user: int = 1200
    rate_limit_facility: int = 60000
    #: Requests a minute through one resident's share link (the viewer steps through a CT).
    rate_limit_share: int = 12000
    #: Days a resident's share link lasts unless the request says otherwise (at most 365).
    share_days: float = 30.0
    #: The key that signs share links (base64 or hex, ≥ 32 bytes). None: a random key kept in
    #: the data dir's keys/ (so links survive a restart); give every process the same one.
    share_secret: str | None = None
    #: Seconds a facility's answer to a study search is reused (0: never).
    query_cache_ttl: float = 10.0
    #: Seconds the series of a study (modality, body part: what recognition looks at) are
    #: reused. Studies rarely change; a store through the gateway starts afresh at once.
    study_series_ttl: float = 3600.0

    @classmethod
    def load(
        cls,
        *,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        config_file = config_file or (
            Path(env["HUREN_CONFIG"]) if env.get("HUREN_CONFIG") else None
        )
        if config_file is not None:
            values.update(_from_file(config_file))
        for f in fields(cls):
            key = f"HUREN_{f.name.upper()}"
            if env.get(key):
                values[f.name] = env[key]
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**{name: _coerce(name, value) for name, value in values.items()})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def move_destination_map(self) -> dict[str, tuple[str, int]]:
        """`move_destinations` parsed; a malformed entry is a ConfigError naming it."""
        out: dict[str, tuple[str, int]] = {}
        for entry in filter(None, (e.strip() for e in self.move_destinations.split(","))):
            ae, _, where = entry.partition("=")
            host, _, port = where.rpartition(":")
            if not ae or len(ae) > 16 or not host or not port.isdigit():
                raise ConfigError(f"move_destinations: expected AE=HOST:PORT, got {entry!r}")
            out[ae] = (host, int(port))
        return out


_TYPES = {f.name: f.type for f in fields(Settings)}


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("huren", data)
    unknown = sorted(set(section) - set(_TYPES))
    if unknown:
        raise ConfigError(f"config file {path}: unknown settings {unknown}")
    return dict(section)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _coerce(name: str, value: Any) -> Any:
    if name not in _TYPES:
        raise ConfigError(f"unknown setting {name!r}")
    kind = str(_TYPES[name])
    try:
        if "Path" in kind:
            return None if value in (None, "") else Path(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return _boolean(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r} expects {kind}, got {value!r}") from None
    return value if value is None else str(value)
