"""DIMSE command sets (PS3.7 Annex E) and their P-DATA fragments (PS3.8 9.3.5), by hand.

A command set is a handful of group-0000 elements, always Implicit VR Little Endian. Encoding
it with a general-purpose dataset writer cost more than the whole rest of a C-FIND round trip
in the fan-out benchmark, so the few message kinds the gateway and the simulator exchange are
packed and parsed here directly. Datasets (identifiers, instances) stay with pydicom.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

# Command Field values (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF

NO_DATASET = 0x0101
HAS_DATASET = 0x0000

# element -> (keyword, VR); all in group 0000.
_ELEMENTS: dict[int, tuple[str, str]] = {
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0120: ("MessageIDBeingRespondedTo", "US"),
    0x0600: ("MoveDestination", "AE"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x0900: ("Status", "US"),
    0x0902: ("ErrorComment", "LO"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x1020: ("NumberOfRemainingSuboperations", "US"),
    0x1021: ("NumberOfCompletedSuboperations", "US"),
    0x1022: ("NumberOfFailedSuboperations", "US"),
    0x1023: ("NumberOfWarningSuboperations", "US"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}
_BY_KEYWORD = {kw: (element, vr) for element, (kw, vr) in _ELEMENTS.items()}
_HEADER = struct.Struct("<HHL")
_PDV = struct.Struct(">LBB")


class CommandError(ValueError):
    """A command set that cannot be parsed."""


@dataclass(slots=True)
class Message:
    """One DIMSE message: its command elements by keyword and its encoded dataset, if any."""

    context_id: int
    command: dict[str, int | str] = field(default_factory=dict)
    dataset: bytes | None = None

    @property
    def command_field(self) -> int:
        return int(self.command.get("CommandField", -1))

    @property
    def status(self) -> int:
        return int(self.command.get("Status", -1))

    def __getitem__(self, keyword: str) -> int | str:
        return self.command[keyword]

    def get(self, keyword: str, default: int | str) -> int | str:
        return self.command.get(keyword, default)


def encode_command(command: dict[str, int | str], *, has_dataset: bool) -> bytes:
    """Pack a command set, with CommandGroupLength and CommandDataSetType filled in."""
    items = dict(command)
    items["CommandDataSetType"] = HAS_DATASET if has_dataset else NO_DATASET
    body = bytearray()
    for element, keyword, vr in sorted((_BY_KEYWORD[k][0], k, _BY_KEYWORD[k][1]) for k in items):
        value = items[keyword]
        if vr == "US":
            raw = struct.pack("<H", int(value))
        else:
            raw = str(value).encode("ascii")
            if len(raw) % 2:
                raw += b"\x00" if vr == "UI" else b" "
        body += _HEADER.pack(0x0000, element, len(raw)) + raw
    return _HEADER.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + bytes(body)


def decode_command(data: bytes) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    offset = 0
    try:
        while offset < len(data):
            group, element, length = _HEADER.unpack_from(data, offset)
            offset += 8
            raw = data[offset : offset + length]
            if len(raw) != length or group != 0x0000:
                raise CommandError("command element outside group 0000 or truncated")
            offset += length
            known = _ELEMENTS.get(element)
            if known is None:
                continue  # elements we do not use (e.g. retired or N-service ones)
            keyword, vr = known
            if vr == "US":
                out[keyword] = struct.unpack("<H", raw)[0]
            else:
                out[keyword] = raw.rstrip(b"\x00 ").decode("ascii", "replace")
    except struct.error as exc:
        raise CommandError(f"malformed command set: {exc}") from None
    if "CommandField" not in out:
        raise CommandError("command set without CommandField")
    return out


def fragments(
    context_id: int, command: bytes, dataset: bytes | None, max_pdu: int
) -> Iterator[bytes]:
    """P-DATA-TF PDUs carrying one message: command fragments, then dataset fragments."""
    # A PDV item adds 6 bytes (length, context id, control header) inside the PDU's 6-byte header.
    chunk = max(max_pdu - 12, 1024) if max_pdu else 1_048_576
    for payload, is_command in ((command, True), (dataset, False)):
        if payload is None:
            continue
        view = memoryview(payload)
        for start in range(0, max(len(view), 1), chunk):
            part = view[start : start + chunk]
            last = start + chunk >= len(view)
            control = (1 if is_command else 0) | (2 if last else 0)
            pdv = _PDV.pack(len(part) + 2, context_id, control) + part
            yield struct.pack(">BxL", 0x04, len(pdv)) + pdv


def pdv_items(pdu: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(context id, control header, data) of each PDV in a P-DATA-TF PDU (header included)."""
    offset = 6
    while offset < len(pdu):
        if offset + 6 > len(pdu):
            raise CommandError("truncated PDV item")
        length, context_id, control = _PDV.unpack_from(pdu, offset)
        if length < 2 or offset + 4 + length > len(pdu):
            raise CommandError("PDV item length runs past its PDU")
        yield context_id, control, pdu[offset + 6 : offset + 4 + length]
        offset += 4 + length
