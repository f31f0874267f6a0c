"""A facility's credentials for its own systems (a PACS or lab system that wants a login):
kept encrypted at rest, never answered by the API, never in a log or an error message.

Stored as a Fernet token (AES-128-CBC with HMAC-SHA256) under a key derived from the
gateway's secret (HKDF, its own label), so one key file serves and a leaked database alone
gives nothing away.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError

_LABEL = b"huren facility credentials v1"
FIELDS = frozenset({"username", "password", "bearer_token"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """HTTP Basic (username and password) or a bearer token; shown as ``Credentials(***)``."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return "Credentials(***)"

    @classmethod
    def parse(cls, raw: Any) -> Credentials:
        """From the admin API's ``credentials`` object; ValueError names what is wrong (never
        a value)."""
        if not isinstance(raw, dict):
            raise ValueError("credentials is an object: username and password, or bearer_token")
        unknown = sorted(set(raw) - FIELDS)
        if unknown:
            raise ValueError(f"credentials: unknown fields {unknown}")
        for key, value in raw.items():
            if not isinstance(value, str) or not value or len(value) > 4096:
                raise ValueError(f"credentials.{key} must be a non-empty string")
        basic = "username" in raw or "password" in raw
        if basic == ("bearer_token" in raw) or (basic and not {"username", "password"} <= set(raw)):
            raise ValueError("credentials: give username and password, or bearer_token")
        return cls(raw.get("username"), raw.get("password"), raw.get("bearer_token"))

    def headers(self) -> dict[str, str]:
        """The Authorization header to send the facility's systems (RFC 7617 or 6750)."""
        if self.bearer_token:
            return {"Authorization": f"Bearer {self.bearer_token}"}
        pair = f"{self.username}:{self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}

    def kind(self) -> str:
        return "bearer" if self.bearer_token else "basic"


class Vault:
    """Seals and opens credentials with the key derived from the gateway's secret."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(secret)
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, credentials: Credentials) -> str:
        raw = {
            k: v
            for k, v in (
                ("username", credentials.username),
                ("password", credentials.password),
                ("bearer_token", credentials.bearer_token),
            )
            if v is not None
        }
        return self._fernet.encrypt(json.dumps(raw).encode()).decode("ascii")

    def open(self, sealed: str) -> Credentials:
        try:
            raw = json.loads(self._fernet.decrypt(sealed.encode("ascii")))
        except (InvalidToken, ValueError):
            raise ConfigError(
                "stored facility credentials cannot be opened with this gateway's secret"
            ) from None
        return Credentials.parse(raw)
