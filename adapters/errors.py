"""Errors an adapter raises; the federation engine turns them into per-facility outcomes."""

from __future__ import annotations


class UpstreamError(Exception):
    """An upstream system failed or answered something we cannot use."""

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, status={self.status!r})"


class UpstreamUnavailable(UpstreamError, ConnectionError):
    """The upstream could not be reached (refused, reset, association rejected)."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The upstream did not answer within its deadline."""


class UpstreamProtocolError(UpstreamError, ValueError):
    """The upstream answered, but not in its protocol's form (garbage, bad JSON, bad status)."""
