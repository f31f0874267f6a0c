"""MLLP, the Minimal Lower Layer Protocol that carries HL7 v2 over TCP, for asyncio streams.

A frame is a start block, the message, and an end block (HL7 v2.5.1, Appendix C.4.3)::

    <SB> message <EB><CR>        SB = 0x0B, EB = 0x1C, CR = 0x0D

The reading side (`read_frame`) serves both the gateway's own MLLP listener and a client
waiting for an ACK, so it raises `MllpFramingError` (a `ValueError`) and leaves the mapping
onto `UpstreamError` kinds to the client side (`MllpConnection`, `send_and_wait_ack`).

The client side takes `timeout` parameters although ruff's ASYNC109 prefers the caller's
`asyncio.timeout()`: a deadline met here is raised as `UpstreamTimeout`, and the connection
is aborted at once so that a late ACK cannot be read as the answer to the next message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from types import TracebackType

from .errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: Largest message body (framing excluded) read by default. Lab results are small; a frame
#: of a megabyte is a runaway sender, not a result.
MAX_FRAME_BYTES = 1_048_576


class MllpFramingError(ValueError):
    """The bytes on the stream are not an MLLP frame (junk, oversize, or cut short)."""

    def __init__(self, detail: str, *, received: bytes = b"") -> None:
        super().__init__(detail)
        self.detail = detail
        #: The first bytes of what arrived instead of a frame (at most 32), for logs.
        self.received = received[:32]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, received={self.received!r})"


async def read_frame(
    reader: asyncio.StreamReader, *, max_bytes: int = MAX_FRAME_BYTES
) -> bytes | None:
    """Read one MLLP frame and return the message inside it.

    Parameters
    ----------
    reader
        The stream, positioned at a frame boundary.
    max_bytes
        Largest message accepted, framing excluded.

    Returns
    -------
    bytes | None
        The message without its framing, or ``None`` if the stream ended cleanly before a
        frame began.

    Raises
    ------
    MllpFramingError
        Something other than the start block began the frame, the message exceeded
        `max_bytes`, or the stream ended inside the frame.
    """
    first = await reader.read(1)
    if not first:
        return None
    if first != START_BLOCK:
        # Show the peer's junk as it was sent, as far as it is already buffered.
        junk = first + await _take_buffered(reader, 31)
        raise MllpFramingError(f"expected start block 0x0B, got {first[0]:#04x}", received=junk)
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await reader.readuntil(END_BLOCK)
            done = True
        except asyncio.LimitOverrunError as exc:
            # The frame is longer than the reader's buffer limit (64 KiB by default): take
            # what is safe to take (never a half of the end block) and keep looking.
            chunk = await reader.readexactly(exc.consumed)
            done = False
        except asyncio.IncompleteReadError as exc:
            raise MllpFramingError(
                f"stream ended inside a frame after {size + len(exc.partial)} bytes",
                received=parts[0] if parts else exc.partial,
            ) from None
        size += len(chunk) - (len(END_BLOCK) if done else 0)
        if size > max_bytes:
            raise MllpFramingError(
                f"frame exceeds {max_bytes} bytes (got at least {size})",
                received=parts[0] if parts else chunk,
            )
        parts.append(chunk)
        if done:
            return b"".join(parts)[: -len(END_BLOCK)]


async def _take_buffered(reader: asyncio.StreamReader, n: int) -> bytes:
    """Up to `n` bytes already received, without waiting for more (the stream is spoilt anyway)."""
    # A read under a zero timeout returns at once when bytes are buffered, else is cancelled.
    try:
        async with asyncio.timeout(0):
            return await reader.read(n)
    except TimeoutError:
        return b""


def frame(message: bytes) -> bytes:
    """Wrap `message` in MLLP framing.

    Raises
    ------
    MllpFramingError
        The message holds a start or end block byte, which would break the framing
        (HL7 v2 text never does: it is encoded with no C0 controls but CR).
    """
    for marker in (START_BLOCK, END_BLOCK[:1]):
        at = message.find(marker)
        if at >= 0:
            raise MllpFramingError(
                f"message holds framing byte {marker[0]:#04x} at offset {at}",
                received=message[at : at + 32],
            )
    return START_BLOCK + message + END_BLOCK


class MllpConnection:
    """One client connection to an MLLP listener, one message in flight at a time.

    Every failure is raised as an `UpstreamError` kind, and after any failure the connection
    is closed: a late ACK would otherwise be taken for the answer to the next message.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._max_bytes = max_bytes
        self._closed = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,  # noqa: ASYNC109 -- see the module docstring
        max_bytes: int = MAX_FRAME_BYTES,
    ) -> MllpConnection:
        """Connect to an MLLP listener.

        Raises
        ------
        UpstreamUnavailable
            The connection was refused or could not be made.
        UpstreamTimeout
            It was not made within `timeout` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            raise UpstreamTimeout(f"no MLLP connection to {host}:{port} in {timeout}s") from None
        except OSError as exc:
            raise UpstreamUnavailable(
                f"cannot connect to MLLP {host}:{port}: {exc.strerror or exc}"
            ) from None
        return cls(reader, writer, max_bytes=max_bytes)

    @property
    def usable(self) -> bool:
        """False once closed, or once the peer is known to have closed its side."""
        return not (self._closed or self._writer.is_closing() or self._reader.at_eof())

    async def exchange(
        self,
        message: bytes,
        *,
        timeout: float,  # noqa: ASYNC109 -- see the module docstring
    ) -> bytes:
        """Send one message and return the message of the frame that answers it.

        Raises
        ------
        UpstreamUnavailable
            The connection was closed or reset before an answer arrived.
        UpstreamTimeout
            No answer arrived within `timeout` seconds.
        UpstreamProtocolError
            The answer was not an MLLP frame.
        """
        if self._closed:
            raise UpstreamUnavailable("MLLP connection already closed")
        data = frame(message)
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(data)
                await self._writer.drain()
                answer = await read_frame(self._reader, max_bytes=self._max_bytes)
        except TimeoutError:
            self._abort()
            raise UpstreamTimeout(f"no MLLP answer in {timeout}s") from None
        except MllpFramingError as exc:
            self._abort()
            raise UpstreamProtocolError(f"malformed MLLP answer: {exc.detail}") from None
        except OSError as exc:
            self._abort()
            raise UpstreamUnavailable(
                f"MLLP connection lost: {exc.strerror or type(exc).__name__}"
            ) from None
        if answer is None:
            self._abort()
            raise UpstreamUnavailable("peer closed the MLLP connection without answering")
        return answer

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        # The peer may already have reset the connection; closing is all we wanted anyway.
        with suppress(OSError):
            await self._writer.wait_closed()

    def _abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()

    async def __aenter__(self) -> MllpConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def send_and_wait_ack(
    host: str,
    port: int,
    message: bytes,
    *,
    timeout: float,  # noqa: ASYNC109 -- see the module docstring
    max_bytes: int = MAX_FRAME_BYTES,
) -> bytes:
    """Connect, send one framed message, read the framed ACK, and close.

    Parameters
    ----------
    host, port
        The MLLP listener.
    message
        The HL7 v2 message, encoded, without framing.
    timeout
        Seconds for the whole exchange, connecting included.
    max_bytes
        Largest ACK accepted.

    Returns
    -------
    bytes
        The ACK message without framing; it is not parsed here.

    Raises
    ------
    UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError
        As `MllpConnection.open` and `MllpConnection.exchange`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = await MllpConnection.open(host, port, timeout=timeout, max_bytes=max_bytes)
    async with conn:
        return await conn.exchange(message, timeout=max(deadline - loop.time(), 0.0))


async def serve(
    handle: Callable[[bytes], Awaitable[bytes]],
    host: str,
    port: int,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    idle_seconds: float = 600.0,
) -> asyncio.Server:
    """Listen for MLLP peers: each whole message goes to ``handle``, whose answer (an ACK) is
    framed and sent back before the next message is read.

    A stream that stops being MLLP (junk, an oversized frame, a connection cut mid-message) is
    closed: nothing of the broken frame was acknowledged, so the sender sends it again.
    """

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(idle_seconds):
                    message = await read_frame(reader, max_bytes=max_bytes)
                if message is None:
                    break
                answer = await handle(message)
                writer.write(frame(answer))
                await writer.drain()
        except (MllpFramingError, TimeoutError, ConnectionError) as exc:
            log.info("MLLP connection closed: %s", type(exc).__name__)
        finally:
            writer.close()

    return await asyncio.start_server(on_connection, host, port, reuse_address=True)
