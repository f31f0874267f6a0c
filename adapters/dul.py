"""The DICOM Upper Layer (PS3.8) and DIMSE messaging (PS3.7) on asyncio streams.

pynetdicom runs every association as two threads that poll every millisecond. With pooled
associations to tens of facilities that burned more than a core while idle and added tens of
milliseconds to each C-FIND (measured with bench/federation.py). Here the same protocol runs
on the event loop, with pynetdicom's own PDU and DIMSE message codecs doing the encoding: no
threads, no polling, and an open association costs nothing while it waits.

Both sides are here: `Association` requests (the gateway asking a PACS), `accept` answers
(a PACS, simulated or the gateway's own SCP, being asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
)
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

from . import dimse_codec as codec
from .dimse_codec import CommandError, Message
from .errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailable

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
#: Largest PDU we accept (the peer may send smaller).
MAX_PDU = 1_048_576
#: Largest PDU we read from a peer, whatever it claims: guards against garbage lengths.
MAX_PDU_READ = 16 * 1_048_576
PENDING = (0xFF00, 0xFF01)
_PDU_HEADER = struct.Struct(">BxL")
_ASSOCIATE_RQ, _ASSOCIATE_AC, _ASSOCIATE_RJ, _P_DATA = 0x01, 0x02, 0x03, 0x04
_RELEASE_RQ, _RELEASE_RP, _ABORT = 0x05, 0x06, 0x07
#: Seconds an acceptor waits for the A-ASSOCIATE-RQ after a connection opens.
ACSE_TIMEOUT = 30.0
DEFAULT_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class PeerReleased(Exception):
    """The peer asked to release the association (an acceptor's normal end)."""


class Link:
    """PDUs and DIMSE messages over one connection; the common half of both sides."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.contexts: dict[int, PresentationContext] = {}
        self.peer_max_pdu = MAX_PDU
        #: Who the peer is, as the acceptor's authorization decided (see `accept`).
        self.user: object | None = None

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def context(self, context_id: int) -> PresentationContext:
        return self.contexts[context_id]

    def is_implicit(self, context_id: int) -> bool:
        return bool(self.contexts[context_id].transfer_syntax[0] == ImplicitVRLittleEndian)

    async def read_pdu(self) -> tuple[int, bytes]:
        try:
            header = await self.reader.readexactly(6)
        except asyncio.IncompleteReadError:
            raise UpstreamUnavailable("connection closed by the peer") from None
        except ConnectionError as exc:
            raise UpstreamUnavailable(f"connection lost: {exc}") from None
        kind, length = _PDU_HEADER.unpack(header)
        if not _ASSOCIATE_RQ <= kind <= _ABORT or length > MAX_PDU_READ:
            raise UpstreamProtocolError(f"not a DICOM PDU (type 0x{kind:02X}, length {length})")
        try:
            body = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise UpstreamUnavailable("connection closed mid-PDU") from None
        return kind, header + body

    async def send(
        self, context_id: int, command: dict[str, int | str], dataset: bytes | None = None
    ) -> None:
        packed = codec.encode_command(command, has_dataset=dataset is not None)
        try:
            for pdu in codec.fragments(context_id, packed, dataset, self.peer_max_pdu):
                self.writer.write(pdu)
            await self.writer.drain()
        except ConnectionError as exc:
            raise UpstreamUnavailable(f"connection lost: {exc}") from None

    @staticmethod
    def encode_dataset(ds: Dataset, implicit: bool) -> bytes:
        data: bytes | None = encode(ds, implicit, True)
        if data is None:
            raise UpstreamProtocolError("dataset could not be encoded")
        return data

    async def receive(self) -> Message:
        """The next whole DIMSE message (command and dataset reassembled from PDVs)."""
        command, dataset = bytearray(), bytearray()
        context_id: int | None = None
        parsed: dict[str, int | str] | None = None
        while True:
            kind, raw = await self.read_pdu()
            if kind == _ABORT:
                raise UpstreamUnavailable("association aborted by the peer")
            if kind == _RELEASE_RQ:
                self.writer.write(A_RELEASE_RP().encode())
                with contextlib.suppress(ConnectionError):
                    await self.writer.drain()
                raise PeerReleased()
            if kind != _P_DATA:
                raise UpstreamProtocolError(f"expected P-DATA-TF, got PDU type 0x{kind:02X}")
            try:
                for cx, control, data in codec.pdv_items(raw):
                    if cx not in self.contexts or (context_id is not None and cx != context_id):
                        raise UpstreamProtocolError(f"message on unexpected context {cx}")
                    context_id = cx
                    if control & 1:
                        command += data
                        if control & 2:
                            parsed = codec.decode_command(bytes(command))
                            if parsed.get("CommandDataSetType") == codec.NO_DATASET:
                                return Message(cx, parsed)
                    else:
                        dataset += data
                        if control & 2 and parsed is not None:
                            return Message(cx, parsed, bytes(dataset))
            except CommandError as exc:
                raise UpstreamProtocolError(str(exc)) from None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            pdu = A_ABORT_RQ()
            prim = A_ABORT()
            prim.abort_source = 0
            pdu.from_primitive(prim)
            self.writer.write(pdu.encode())
        self.writer.close()

    def close(self) -> None:
        self.writer.close()

    async def c_store(
        self,
        context_id: int,
        sop_class: str,
        sop_instance: str,
        dataset: bytes,
        message_id: int,
        *,
        move_originator: tuple[str, int] | None = None,
    ) -> int:
        """Send one C-STORE-RQ with an already encoded dataset; return the response status."""
        command: dict[str, int | str] = {
            "CommandField": codec.C_STORE_RQ,
            "AffectedSOPClassUID": sop_class,
            "AffectedSOPInstanceUID": sop_instance,
            "MessageID": message_id,
            "Priority": 2,
        }
        if move_originator is not None:
            command["MoveOriginatorApplicationEntityTitle"] = move_originator[0]
            command["MoveOriginatorMessageID"] = move_originator[1]
        await self.send(context_id, command, dataset)
        return (await self.receive()).status


class Association(Link):
    """The requestor side: `open`, then `c_echo` / `c_find` / `c_store`, then `release`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._by_syntax: dict[str, int] = {}
        self._message_ids = itertools.count()
        self._busy = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        calling_ae: str,
        called_ae: str,
        abstract_syntaxes: Sequence[str],
        transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
        scp_roles: Sequence[str] = (),
        user_identity: bytes | None = None,
    ) -> Association:
        """Associate; ``scp_roles`` are storage classes we offer to take C-STOREs for on this
        association (SCP/SCU role selection, PS3.7 D.3.3.4), as C-GET needs;
        ``user_identity`` a JSON Web Token sent by user identity negotiation (PS3.7 D.3.3.7,
        type 5)."""
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise UpstreamUnavailable(f"cannot connect: {exc.strerror or exc}") from None
        assoc = cls(reader, writer)
        try:
            await assoc._negotiate(
                calling_ae,
                called_ae,
                abstract_syntaxes,
                transfer_syntaxes,
                scp_roles,
                user_identity,
            )
        except BaseException:
            writer.close()
            raise
        return assoc

    async def _negotiate(
        self,
        calling_ae: str,
        called_ae: str,
        abstract_syntaxes: Sequence[str],
        transfer_syntaxes: Sequence[str],
        scp_roles: Sequence[str],
        user_identity: bytes | None = None,
    ) -> None:
        proposed = _proposed(abstract_syntaxes, transfer_syntaxes)
        self.writer.write(_associate_rq(calling_ae, called_ae, proposed, scp_roles, user_identity))
        kind, raw = await self.read_pdu()
        if kind == _ASSOCIATE_RJ:
            rj = A_ASSOCIATE_RJ()
            rj.decode(raw)
            raise UpstreamUnavailable(
                f"association rejected (result {rj.result}, source {rj.source}, "
                f"reason {rj.reason_diagnostic})"
            )
        if kind != _ASSOCIATE_AC:
            raise UpstreamProtocolError(f"expected A-ASSOCIATE-AC, got PDU type 0x{kind:02X}")
        accepted = _decode_pdu(A_ASSOCIATE_AC(), raw, "A-ASSOCIATE-AC")
        by_id = {cx.context_id: cx for cx in proposed}
        for cx in accepted.presentation_context_definition_results_list:
            cid = cx.context_id
            if cx.result == 0 and cid is not None and cid in by_id and cx.transfer_syntax:
                ours = by_id[cid]
                ours.transfer_syntax = [UID(cx.transfer_syntax[0])]
                self.contexts[cid] = ours
                self._by_syntax.setdefault(str(ours.abstract_syntax), cid)
        for item in accepted.user_information:
            if isinstance(item, MaximumLengthNotification) and item.maximum_length_received:
                self.peer_max_pdu = int(item.maximum_length_received)

    def context_for(self, abstract_syntax: str) -> int:
        try:
            return self._by_syntax[abstract_syntax]
        except KeyError:
            raise UpstreamProtocolError(f"peer did not accept {abstract_syntax}") from None

    def context_for_syntaxes(self, abstract_syntax: str, transfer_syntax: str) -> int | None:
        """The accepted context for this class carrying exactly this transfer syntax."""
        for cid, cx in self.contexts.items():
            if (
                str(cx.abstract_syntax) == abstract_syntax
                and str(cx.transfer_syntax[0]) == transfer_syntax
            ):
                return cid
        return None

    def next_message_id(self) -> int:
        return next(self._message_ids) % 0xFFFF + 1  # US, never 0

    async def c_echo(self) -> int:
        cx = self.context_for(VERIFICATION)
        command: dict[str, int | str] = {
            "CommandField": codec.C_ECHO_RQ,
            "AffectedSOPClassUID": VERIFICATION,
            "MessageID": self.next_message_id(),
        }
        async with self._busy:
            await self.send(cx, command)
            return (await self.receive()).status

    async def c_find(
        self, identifier: Dataset | Callable[[bool], bytes], sop_class: str
    ) -> AsyncIterator[Dataset]:
        """Yield each pending match; raise `UpstreamError` on a failure status.

        ``identifier`` is a dataset, or a function giving it already encoded (Implicit VR when
        called with True), so a fan-out can encode one query once for every facility.
        """
        cx = self.context_for(sop_class)
        implicit = self.is_implicit(cx)
        encoded = (
            self.encode_dataset(identifier, implicit)
            if isinstance(identifier, Dataset)
            else identifier(implicit)
        )
        command: dict[str, int | str] = {
            "CommandField": codec.C_FIND_RQ,
            "AffectedSOPClassUID": sop_class,
            "MessageID": self.next_message_id(),
            "Priority": 2,
        }
        async with self._busy:
            await self.send(cx, command, encoded)
            while True:
                rsp = await self.receive()
                status = rsp.status
                if status in PENDING:
                    if rsp.dataset:
                        yield decode(BytesIO(rsp.dataset), implicit, True)
                    continue
                if status != 0x0000:
                    raise UpstreamError(f"C-FIND failed with status 0x{status:04X}")
                return

    async def c_get(self, identifier: Dataset, sop_class: str) -> AsyncIterator[Message]:
        """Yield each C-STORE-RQ the peer sends back (its instances, one at a time).

        The C-STORE-RSP for an instance goes out when the consumer asks for the next one, so
        a slow client slows the PACS instead of filling the gateway's memory. Raises
        `UpstreamError` when the C-GET ends with a failure status.
        """
        cx = self.context_for(sop_class)
        command: dict[str, int | str] = {
            "CommandField": codec.C_GET_RQ,
            "AffectedSOPClassUID": sop_class,
            "MessageID": self.next_message_id(),
            "Priority": 2,
        }
        async with self._busy:
            await self.send(cx, command, self.encode_dataset(identifier, self.is_implicit(cx)))
            while True:
                msg = await self.receive()
                if msg.command_field == codec.C_STORE_RQ:
                    yield msg
                    await self.send(
                        msg.context_id,
                        {
                            "CommandField": codec.C_STORE_RSP,
                            "AffectedSOPClassUID": msg.get("AffectedSOPClassUID", ""),
                            "AffectedSOPInstanceUID": msg.get("AffectedSOPInstanceUID", ""),
                            "MessageIDBeingRespondedTo": msg.get("MessageID", 0),
                            "Status": 0x0000,
                        },
                    )
                    continue
                status = msg.status
                if status in PENDING:
                    continue
                if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                    return
                raise UpstreamError(f"C-GET failed with status 0x{status:04X}")

    async def release(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(A_RELEASE_RQ().encode())
            async with asyncio.timeout(2):
                await self.writer.drain()
                await self.read_pdu()
        self.close()


class AssociationRejected(UpstreamError):
    """The acceptor refused the association (A-ASSOCIATE-RJ sent)."""


#: Why an association is refused (PS3.8 9.3.4, source 1: service user).
REJECT_NO_REASON = 0x01
REJECT_CALLING_AE = 0x03
REJECT_CALLED_AE = 0x07

#: (link, calling AE, called AE, JSON Web Token from user identity negotiation or None) ->
#: None to accept (having set ``link.user``), or a reason to refuse.
Authorize = Callable[[Link, str, str, bytes | None], Awaitable[int | None]]


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    supported: Iterable[PresentationContext],
    *,
    authorize: Authorize | None = None,
) -> tuple[Link, tuple[str, str]]:
    """Answer an A-ASSOCIATE-RQ as acceptor; return the link and (calling, called) AE titles.

    Contexts are negotiated with pynetdicom's acceptor rules, SCP/SCU role selection included
    (a C-GET requestor asks to take C-STOREs back on the same association). With
    ``authorize``, an association it refuses is answered A-ASSOCIATE-RJ (permanent) and
    `AssociationRejected` raised. A JSON Web Token sent by user identity negotiation (type 5)
    is handed to it.
    """
    link = Link(reader, writer)
    async with asyncio.timeout(ACSE_TIMEOUT):
        kind, raw = await link.read_pdu()
    if kind != _ASSOCIATE_RQ:
        raise UpstreamProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{kind:02X}")
    rq = _decode_pdu(A_ASSOCIATE_RQ(), raw, "A-ASSOCIATE-RQ")
    calling, called = str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip()
    if authorize is not None:
        token = next(
            (
                bytes(item.primary_field)
                for item in rq.user_information
                if isinstance(item, UserIdentityNegotiation)
                and item.user_identity_type == 5
                and item.primary_field
            ),
            None,
        )
        reason = await authorize(link, calling, called, token)
        if reason is not None:
            refusal = A_ASSOCIATE()
            refusal.result = 0x01  # rejected (permanent)
            refusal.result_source = 0x01  # by the service user
            refusal.diagnostic = reason
            rj = A_ASSOCIATE_RJ()
            rj.from_primitive(refusal)
            writer.write(rj.encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            raise AssociationRejected(f"association from {calling!r} refused (reason {reason})")
    roles = {
        UID(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in rq.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, reply_roles = negotiate_as_acceptor(
        rq.presentation_context_definition_list, list(supported), roles or None
    )
    for item in rq.user_information:
        if isinstance(item, MaximumLengthNotification) and item.maximum_length_received:
            link.peer_max_pdu = int(item.maximum_length_received)
    link.contexts = {
        cx.context_id: cx for cx in results if cx.result == 0 and cx.context_id is not None
    }
    ac = A_ASSOCIATE()
    ac.application_context_name = APPLICATION_CONTEXT
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = results
    ac.user_information = [*_user_information(), *reply_roles]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    writer.write(pdu.encode())
    await writer.drain()
    return link, (calling, called)


def supported_contexts(
    abstract_syntaxes: Iterable[str],
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    *,
    scp_role: bool = False,
) -> list[PresentationContext]:
    out = []
    for syntax in abstract_syntaxes:
        cx = build_context(syntax, list(transfer_syntaxes))
        if scp_role:
            # Accept a requestor's SCP role for this class (C-GET's C-STORE sub-operations).
            cx.scu_role = True
            cx.scp_role = True
        out.append(cx)
    return out


def _decode_pdu(pdu: Any, raw: bytes, name: str) -> Any:
    """Decode an association PDU to its primitive; a malformed one is a protocol error."""
    try:
        pdu.decode(raw)
        return pdu.to_primitive()
    except (ValueError, KeyError, IndexError, struct.error) as exc:
        raise UpstreamProtocolError(f"undecodable {name}: {exc}") from None


def _proposed(
    abstract_syntaxes: Sequence[str], transfer_syntaxes: Sequence[str]
) -> list[PresentationContext]:
    contexts = []
    for i, syntax in enumerate(abstract_syntaxes):
        cx = build_context(syntax, list(transfer_syntaxes))
        cx.context_id = 2 * i + 1  # PS3.8 9.3.2.2: odd integers
        contexts.append(cx)
    return contexts


def _user_information() -> list[Any]:
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [max_length, impl_uid, impl_name]


def _associate_rq(
    calling_ae: str,
    called_ae: str,
    proposed: list[PresentationContext],
    scp_roles: Sequence[str],
    user_identity: bytes | None = None,
) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title = calling_ae
    prim.called_ae_title = called_ae
    prim.presentation_context_definition_list = proposed
    roles = []
    for syntax in scp_roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = UID(syntax)
        role.scu_role = False
        role.scp_role = True
        roles.append(role)
    identity = []
    if user_identity is not None:
        item = UserIdentityNegotiation()
        item.user_identity_type = 5  # JSON Web Token
        item.positive_response_requested = False
        item.primary_field = user_identity
        identity.append(item)
    prim.user_information = [*_user_information(), *roles, *identity]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    data: bytes = pdu.encode()
    return data
