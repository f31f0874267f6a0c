"""What the gateway's own pages (the resident portal, the operations console) share: the two
languages, words from a dictionary per language as safe HTML, and the hash a Content
Security Policy allows an inline style or script by."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from html import escape
from typing import Final, Literal

Lang = Literal["zh", "en"]
HTML_LANG: Final[dict[Lang, str]] = {"zh": "zh-CN", "en": "en"}
OTHER_LANG: Final[dict[Lang, Lang]] = {"zh": "en", "en": "zh"}


def words(text: Mapping[Lang, Mapping[str, str]], lang: Lang, key: str, **values: object) -> str:
    """The text ``key`` in ``lang`` as safe HTML, its {fields} filled with escaped values."""
    template = escape(text[lang][key])
    return template.format(**{k: escape(str(v)) for k, v in values.items()}) if values else template


def csp_hash(source: str) -> str:
    """``'sha256-…'`` of an inline style or script, for a Content-Security-Policy."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"
