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


class CatalogueError(GatewayError, ValueError):
    """The recognition catalogue does not validate; the message names the entry and field."""


class NotFound(GatewayError, LookupError):
    """No facility holds what was asked for (a study, series, instance or facility)."""


class FacilityUnavailable(GatewayError):
    """The facility's breaker is open: it failed repeatedly and is not being asked now."""


class Unauthenticated(GatewayError):
    """No usable credentials: no token, or one that does not verify (401)."""

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        #: RFC 6750 error code for WWW-Authenticate; None when no token was sent at all.
        self.error = error


class Forbidden(GatewayError, PermissionError):
    """Known, but not allowed to do this (403): the detail says why, for the user and the
    audit alike."""


class TooManyRequests(GatewayError):
    """Over a rate limit (429); try again after ``retry_after`` seconds."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
