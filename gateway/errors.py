"""The core's root exception and its kinds. Faces translate these once, at the edge."""

from __future__ import annotations


class GatewayError(Exception):
    """Anything the gateway refuses or cannot do, with the detail kept as data."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(GatewayError, ValueError):
    """A configuration value is missing or malformed."""


class RegistryError(GatewayError, ValueError):
    """The facility registry file does not validate; names the entry and the field."""

    def __init__(self, detail: str, *, entry: str | None = None, field: str | None = None) -> None:
        where = " ".join(
            p for p in (f"entry {entry}" if entry else "", f"field {field!r}" if field else "") if p
        )
        super().__init__(f"facility registry: {where + ': ' if where else ''}{detail}")
        self.entry = entry
        self.field = field


class NotFound(GatewayError, LookupError):
    """No facility holds what was asked for (a study, series, instance or facility)."""


class FacilityUnavailable(GatewayError):
    """The facility's breaker is open: it failed repeatedly and is not being asked now."""
