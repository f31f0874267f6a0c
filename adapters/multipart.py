"""multipart/related bodies (RFC 2387) as PS3.18 uses them, produced as a stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(slots=True)
class Part:
    content_type: str
    chunks: AsyncIterator[bytes]
    length: int | None = None


def new_boundary() -> str:
    return uuid.uuid4().hex


def related_content_type(boundary: str, part_type: str = "application/dicom") -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


async def multipart_body(parts: AsyncIterable[Part], boundary: str) -> AsyncIterator[bytes]:
    """The body's bytes, part by part, without holding any part whole."""
    async for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        if part.length is not None:
            head += f"Content-Length: {part.length}\r\n"
        yield (head + "\r\n").encode()
        async for chunk in part.chunks:
            yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
