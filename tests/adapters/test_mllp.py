"""MLLP framing over real loopback sockets, with a small asyncio server as the peer."""

from __future__ import annotations

import asyncio
from contextlib import suppress

import pytest

from adapters.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from adapters.mllp import (
    END_BLOCK,
    START_BLOCK,
    MllpFramingError,
    frame,
    read_frame,
    send_and_wait_ack,
)
from tests.loopback import Handler, Serve
from tests.ports import free_port

MESSAGE = (
    "MSH|^~\\&|LIS|F001|HUREN|HUREN|20240305101500+0800||ORU^R01^ORU_R01|1|P|2.5.1\r"
    "PID|1||M1^^^F001^MR||王^小明\r"
).encode()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


def _sends(payload: bytes) -> Handler:
    """A peer that writes `payload` as is and hangs up."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        await _close(writer)

    return handler


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A listener that answers every frame with the same message, framed."""
    try:
        while (message := await read_frame(reader, max_bytes=4 * 1_048_576)) is not None:
            writer.write(frame(message))
            await writer.drain()
    finally:
        await _close(writer)


async def _read_all(serve: Serve, payload: bytes, *, max_bytes: int = 1_048_576) -> list[bytes]:
    """Every frame a peer sending `payload` delivers, read until clean EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", await serve(_sends(payload)))
    try:
        frames = []
        while (message := await read_frame(reader, max_bytes=max_bytes)) is not None:
            frames.append(message)
        return frames
    finally:
        await _close(writer)


def test_frame_wraps_message_in_start_and_end_blocks() -> None:
    """frame() puts 0x0B before the message and 0x1C 0x0D after it."""
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\x0d"
    assert START_BLOCK == b"\x0b" and END_BLOCK == b"\x1c\r"


@pytest.mark.parametrize("bad", [b"MSH\x0b", b"MSH\x1c\r"])
def test_frame_refuses_message_holding_framing_bytes(bad: bytes) -> None:
    """A message holding a start or end block byte cannot be framed."""
    with pytest.raises(MllpFramingError):
        frame(bad)


@pytest.mark.parametrize("size", [0, 1, 200_000], ids=["empty", "tiny", "beyond-reader-limit"])
async def test_round_trip_through_a_listener(serve: Serve, size: int) -> None:
    """send_and_wait_ack gets back, byte for byte, what an echoing listener read."""
    message = (MESSAGE * (size // len(MESSAGE) + 1))[:size] if size else b""
    port = await serve(_echo)
    assert await send_and_wait_ack("127.0.0.1", port, message, timeout=5) == message


async def test_round_trip_keeps_utf8_chinese(serve: Serve) -> None:
    """Chinese text framed and read back decodes to the same string."""
    port = await serve(_echo)
    answer = await send_and_wait_ack("127.0.0.1", port, MESSAGE, timeout=5)
    assert "王^小明" in answer.decode("utf-8")


async def test_reads_frames_back_to_back_then_none(serve: Serve) -> None:
    """Consecutive frames are read one at a time, and clean EOF after them gives None."""
    frames = await _read_all(serve, frame(b"one") + frame(MESSAGE) + frame(b"three"))
    assert frames == [b"one", MESSAGE, b"three"]


async def test_clean_eof_before_a_frame_gives_none(serve: Serve) -> None:
    """A peer that hangs up without sending anything yields no frame, not an error."""
    assert await _read_all(serve, b"") == []


@pytest.mark.parametrize("junk", [b"hello", b"\r\n", b"\x1c\r"])
async def test_junk_before_start_block_raises(serve: Serve, junk: bytes) -> None:
    """Bytes other than 0x0B where a frame should begin are a framing error."""
    with pytest.raises(MllpFramingError) as caught:
        await _read_all(serve, junk + frame(MESSAGE))
    assert caught.value.received.startswith(junk)


async def test_frame_of_exactly_max_bytes_is_read(serve: Serve) -> None:
    """A message of exactly max_bytes is accepted."""
    assert await _read_all(serve, frame(b"x" * 16), max_bytes=16) == [b"x" * 16]


async def test_oversize_frame_raises(serve: Serve) -> None:
    """A message one byte over max_bytes is a framing error."""
    with pytest.raises(MllpFramingError, match="exceeds 16 bytes"):
        await _read_all(serve, frame(b"x" * 17), max_bytes=16)


async def test_oversize_raises_before_the_end_block_arrives(serve: Serve) -> None:
    """An endless frame fails once past max_bytes, without waiting for its end."""
    with pytest.raises(MllpFramingError, match="exceeds 100000 bytes"):
        await _read_all(serve, START_BLOCK + b"x" * 300_000, max_bytes=100_000)


@pytest.mark.parametrize(
    "payload",
    [START_BLOCK, START_BLOCK + MESSAGE, START_BLOCK + MESSAGE + b"\x1c"],
    ids=["after-start-block", "inside-message", "inside-end-block"],
)
async def test_eof_mid_frame_raises(serve: Serve, payload: bytes) -> None:
    """A peer hanging up inside a frame is a framing error, not a clean EOF."""
    with pytest.raises(MllpFramingError, match="stream ended inside a frame"):
        await _read_all(serve, frame(b"first") + payload)


async def test_unreachable_port_raises_upstream_unavailable() -> None:
    """Nobody listening on the port is UpstreamUnavailable."""
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await send_and_wait_ack("127.0.0.1", free_port(), MESSAGE, timeout=5)


async def test_peer_closing_without_ack_raises_upstream_unavailable(serve: Serve) -> None:
    """A listener that reads the message and hangs up is UpstreamUnavailable."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        await _close(writer)

    port = await serve(hang_up)
    with pytest.raises(UpstreamUnavailable, match="without answering"):
        await send_and_wait_ack("127.0.0.1", port, MESSAGE, timeout=5)


async def test_silent_peer_raises_upstream_timeout(serve: Serve) -> None:
    """A listener that never answers is UpstreamTimeout after the deadline."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and aborts
        await _close(writer)

    port = await serve(silent)
    with pytest.raises(UpstreamTimeout):
        await send_and_wait_ack("127.0.0.1", port, MESSAGE, timeout=0.2)


async def test_unframed_answer_raises_upstream_protocol_error(serve: Serve) -> None:
    """An answer that is not an MLLP frame is UpstreamProtocolError."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await _close(writer)

    port = await serve(garbage)
    with pytest.raises(UpstreamProtocolError, match="start block"):
        await send_and_wait_ack("127.0.0.1", port, MESSAGE, timeout=5)
