"""Structured logging that never carries a patient identifier.

Two guards: code logs ids of facilities and requests, never of patients; and a filter that
masks anything shaped like a national ID number or a DICOM patient name in what does get
logged, in case a message or an upstream error text carries one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# 18-digit resident ID (last may be X), and 15-digit old-style ones.
_NATIONAL_ID = re.compile(r"(?<!\d)(\d{17}[\dXx]|\d{15})(?!\d)")
# DICOM PN with a component separator, e.g. WANG^WEI or 王^伟.
_PERSON_NAME = re.compile(r"[^\s\^=\"',;:]+\^[^\s\^=\"',;:]+(\^[^\s\"',;:]*)*")
# A JSON Web Token (three base64url parts, the header starting {"), and whatever follows a
# Bearer scheme: a token in a log is a credential anyone reading the log can use. aiohttp
# logs a malformed request's headers whole.
_TOKEN = re.compile(r"eyJ[\w-]*\.[\w-]*\.?[\w-]*|(?<=Bearer )\S+", re.IGNORECASE)
# A resident's share link is a credential too: its signature part goes.
_SHARE_LINK = re.compile(r"(/portal/s/[\w-]+)\.[\w-]+")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def redact(text: str) -> str:
    text = _SHARE_LINK.sub(r"\1.[signature]", _TOKEN.sub("[token]", text))
    return _PERSON_NAME.sub("[name]", _NATIONAL_ID.sub("[id]", text))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _RESERVED and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; identifiers travel in them.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
