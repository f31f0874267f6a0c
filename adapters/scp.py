"""A Query/Retrieve SCP on asyncio: associations accepted, requests read and dispatched.

Subclasses answer C-FIND, C-GET/C-MOVE and C-STORE; this base answers C-ECHO, refuses C-MOVE
to destinations it does not know (0xA801), and ends associations cleanly on release, abort,
timeouts and protocol errors. The gateway's SCP and the simulated PACS are both one of these.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from . import dimse_codec as codec
from .dimse_codec import Message
from .dul import AssociationRejected, Link, PeerReleased, accept
from .errors import UpstreamError
from .qr import qr_scp_contexts, response

log = logging.getLogger(__name__)

MOVE_DESTINATION_UNKNOWN = 0xA801


class QrScp:
    def __init__(self, move_destinations: Mapping[str, tuple[str, int]]) -> None:
        self.move_destinations = dict(move_destinations)
        self._contexts = qr_scp_contexts()
        self._server: asyncio.Server | None = None
        self._links: set[Link] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def stop(self) -> None:
        """Stop listening and drop open associations, pooled ones included."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.abort()
        if server is not None:
            await server.wait_closed()

    # -- what a subclass answers ---------------------------------------------------------------

    async def authorize(
        self, link: Link, calling: str, called: str, token: bytes | None
    ) -> int | None:
        """Whether to take an association: None to accept (setting ``link.user``), or a
        rejection reason (dul.REJECT_*). This base takes every association."""
        return None

    async def before(self, request: Message) -> None:
        """Called before each request is answered (the simulator's latency goes here)."""

    async def on_find(self, link: Link, request: Message) -> None:
        raise NotImplementedError

    async def on_retrieve(
        self, link: Link, request: Message, field: int, destination: tuple[str, int] | None
    ) -> None:
        """C-GET (destination None: sub-operations on this association) or C-MOVE."""
        raise NotImplementedError

    async def on_store(self, link: Link, request: Message, peer: tuple[str, str]) -> None:
        raise NotImplementedError

    # -- the association loop ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link: Link | None = None
        try:
            link, peer = await accept(reader, writer, self._contexts, authorize=self.authorize)
            self._links.add(link)
            while True:
                request = await link.receive()
                await self.before(request)
                await self._dispatch(link, request, peer)
        except (PeerReleased, AssociationRejected):
            pass
        except (UpstreamError, TimeoutError, ConnectionError) as exc:
            log.info("association ended: %s", type(exc).__name__)
        except Exception:
            log.exception("SCP failed on an association")
        finally:
            if link is not None:
                self._links.discard(link)
            writer.close()

    async def _dispatch(self, link: Link, request: Message, peer: tuple[str, str]) -> None:
        kind = request.command_field
        if kind == codec.C_ECHO_RQ:
            await link.send(request.context_id, response(request, codec.C_ECHO_RSP, 0x0000))
        elif kind == codec.C_FIND_RQ:
            await self.on_find(link, request)
        elif kind == codec.C_GET_RQ:
            await self.on_retrieve(link, request, codec.C_GET_RSP, None)
        elif kind == codec.C_MOVE_RQ:
            name = str(request.get("MoveDestination", "")).strip()
            destination = self.move_destinations.get(name)
            if destination is None:
                rsp = response(request, codec.C_MOVE_RSP, MOVE_DESTINATION_UNKNOWN)
                await link.send(request.context_id, rsp)
                return
            await self.on_retrieve(link, request, codec.C_MOVE_RSP, destination)
        elif kind == codec.C_STORE_RQ:
            await self.on_store(link, request, peer)
        elif kind == codec.C_CANCEL_RQ:
            pass  # answers go out whole: there is nothing in progress to cancel
        else:
            raise UpstreamError(f"unsupported DIMSE command 0x{kind:04X}")
