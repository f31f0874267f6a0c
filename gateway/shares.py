"""Residents' cloud-film shares (云胶片): a signed, expiring, revocable link to one patient's
images, for one study, one visit (a facility and a day), or all of the resident's records.

A share is a row of the ``share`` table; its link carries ``{id}.{mac}``, the MAC an HMAC of
the id under the gateway's share secret (:func:`share_secret`), so a guessed or altered link
is refused before the database is asked. A share may ask a second factor of whoever opens
it: the last four characters of the resident's national ID number (``id4``), or a six-digit
PIN printed apart from the link (``pin``, kept only as a salted scrypt hash). Wrong answers
are counted in the row, by one atomic UPDATE, so every gateway process counts them; after
``max_attempts`` of them the share locks for ``lockout_seconds``. A passed second factor is
remembered by a signed session cookie (:meth:`Shares.session_cookie`).

Revocation takes effect at once in every gateway process: :meth:`Shares.revoke` sets the
cache flag ``share-revoked:{id}`` (in Redis when processes share one), which
:meth:`Shares.open` reads on every call, while the row itself may be reused from memory for
:data:`ROW_TTL` seconds. A lock is flagged the same way (``share-locked:{id}``).

Nothing here puts a patient identifier in an exception message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args

import segno
from sqlalchemy import (
    Column,
    Date,
    Index,
    Integer,
    String,
    Table,
    case,
    literal,
    or_,
    select,
    update,
)

from .cache import Cache, CacheError
from .errors import ConfigError, GatewayError
from .keyfiles import create_once, keys_dir
from .storage import Store, UtcDateTime, metadata

__all__ = [
    "SecondFactor",
    "Share",
    "ShareRefused",
    "ShareScope",
    "Shares",
    "covers",
    "qr_png",
    "qr_svg",
    "share_secret",
    "share_table",
]

ShareScope = Literal["study", "visit", "all"]
SCOPES: Final[tuple[ShareScope, ...]] = get_args(ShareScope)
#: id4: the last 4 characters of the national ID number; pin: 6 random digits printed apart.
SecondFactor = Literal["none", "id4", "pin"]
SECOND_FACTORS: Final[tuple[SecondFactor, ...]] = get_args(SecondFactor)
RefusalReason = Literal["forged", "expired", "revoked", "locked", "second-factor"]

MAX_DAYS: Final = 365.0  # longest a share may live
ROW_TTL: Final = 5.0  # seconds a share's row is reused in-process (revocation never waits)
ROW_CACHE_ENTRIES: Final = 10_000
SECRET_FILE: Final = "share-secret"
SECRET_BYTES: Final = 32
PIN_DIGITS: Final = 6
MAX_ANSWER_CHARS: Final = 64  # longer answers are wrong without being hashed
# scrypt of a PIN: about 16 MiB and a few tens of ms, run in a thread.
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_MAC_CHARS: Final = 22
_ID_BYTES: Final = 16  # secrets.token_urlsafe(16): 22 characters
_REVOKED_KEY: Final = "share-revoked:"
_LOCKED_KEY: Final = "share-locked:"
_TOKEN: Final = re.compile(r"([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{22})")
_COOKIE: Final = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{43})")
_FACILITY_MAX: Final = 16
_STUDY_MAX: Final = 64  # a DICOM UID is at most 64 characters

log = logging.getLogger(__name__)

share_table = Table(
    "share",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("person_key", String(64), nullable=False),  # the national ID number
    Column("scope", String(8), nullable=False),  # study | visit | all
    Column("facility", String(_FACILITY_MAX), nullable=True),  # study and visit scopes
    Column("study", String(_STUDY_MAX), nullable=True),  # StudyInstanceUID, study scope
    Column("visit_date", Date, nullable=True),  # visit scope
    Column("second_factor", String(8), nullable=False),  # none | id4 | pin
    Column("pin_hash", String(255), nullable=True),  # scrypt$n$r$p$salt$hash
    Column("created_by", String(255), nullable=False),
    Column("created_role", String(32), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("failed_attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("locked_until", UtcDateTime(), nullable=True),
    Index("ix_share_person_key", "person_key"),
)

_REFUSALS: Final[dict[RefusalReason, str]] = {
    "forged": "the share link is not valid",
    "expired": "the share link has expired",
    "revoked": "the share link has been revoked",
    "locked": "the share is locked after too many wrong answers; try again later",
    "second-factor": "the share asks for its second factor",
}


class ShareRefused(GatewayError):
    """A share link is refused; ``reason`` says why. The message never names the patient."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(_REFUSALS[reason])
        self.reason: RefusalReason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


@dataclass(frozen=True, slots=True)
class Share:
    """One share, as stored."""

    id: str  # 22 url-safe characters
    person_key: str  # the national ID number (the gateway's person key)
    scope: ShareScope
    facility: str | None  # study and visit scopes: the holding facility id
    study: str | None  # study scope: the StudyInstanceUID
    visit_date: date | None  # visit scope: the day of the visit (with ``facility``)
    second_factor: SecondFactor
    created_by: str
    created_role: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


def covers(share: Share, facility: str, *, study: str | None, day: date | None) -> bool:
    """Whether ``share`` covers a record held by ``facility``.

    ``study`` is the record's StudyInstanceUID (None for a record of no study, such as a lab
    result) and ``day`` its date (None when unknown). An ``all`` share covers everything of
    its person; a ``study`` share only that study at that facility; a ``visit`` share what
    that facility holds of that day. Whose records they are is for the caller to check.
    """
    if share.scope == "all":
        return True
    if facility != share.facility:
        return False
    if share.scope == "study":
        return study is not None and study == share.study
    if share.scope == "visit":
        return day is not None and day == share.visit_date
    return False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _share(r: Any) -> Share:
    return Share(
        id=r.id,
        person_key=r.person_key,
        scope=r.scope,
        facility=r.facility,
        study=r.study,
        visit_date=r.visit_date,
        second_factor=r.second_factor,
        created_by=r.created_by,
        created_role=r.created_role,
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
    )


def _hash_pin(pin: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        pin.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _pin_matches(pin: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            pin.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        log.error("a share's PIN hash is malformed; refusing the answer")
        return False
    return hmac.compare_digest(got, expected)


def _check_length(name: str, value: str, limit: int) -> None:
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")


def _validate(
    person_key: str,
    scope: str,
    facility: str | None,
    study: str | None,
    visit_date: date | None,
    days: float,
    second_factor: str,
    created_by: str,
    created_role: str,
) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES} (got {scope!r})")
    if second_factor not in SECOND_FACTORS:
        raise ValueError(f"second_factor must be one of {SECOND_FACTORS} (got {second_factor!r})")
    if not person_key or not person_key.strip() or len(person_key) > 64:
        raise ValueError("person_key must be a national ID number of 1 to 64 characters")
    if second_factor == "id4" and len(person_key) < 4:
        raise ValueError("second factor 'id4' needs a person key of at least 4 characters")
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_DAYS:
        raise ValueError(f"days must be more than 0 and at most {MAX_DAYS:g} (got {days!r})")
    _check_length("created_by", created_by, 255)
    _check_length("created_role", created_role, 32)
    if scope == "study":
        if facility is None or study is None:
            raise ValueError("a study share needs facility and study (the StudyInstanceUID)")
        if visit_date is not None:
            raise ValueError("a study share takes no visit_date")
    elif scope == "visit":
        if facility is None or visit_date is None:
            raise ValueError("a visit share needs facility and visit_date")
        if study is not None:
            raise ValueError("a visit share takes no study")
    elif facility is not None or study is not None or visit_date is not None:
        raise ValueError("an 'all' share takes no facility, study or visit_date")
    if facility is not None:
        _check_length("facility", facility, _FACILITY_MAX)
    if study is not None:
        _check_length("study", study, _STUDY_MAX)
    if visit_date is not None and (
        isinstance(visit_date, datetime) or not isinstance(visit_date, date)
    ):
        raise ValueError(f"visit_date must be a date (got {type(visit_date).__name__})")


class Shares:
    """Create, open, revoke and guard shares, over the store and the (shared) cache.

    Parameters
    ----------
    store, cache
        The durable store (the ``share`` table) and the cache every gateway process shares.
    secret
        The share secret, at least 32 bytes (:func:`share_secret`); the same in every process.
    max_attempts
        Wrong second-factor answers after which the share locks.
    lockout_seconds
        How long a lock lasts; the count of wrong answers starts again after it.
    session_seconds
        How long a session cookie of a passed second factor lasts (never past the share).
    """

    def __init__(
        self,
        store: Store,
        cache: Cache,
        secret: bytes,
        *,
        max_attempts: int = 5,
        lockout_seconds: float = 900.0,
        session_seconds: float = 1800.0,
    ) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the share secret must be at least {SECRET_BYTES} bytes")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (got {max_attempts!r})")
        if not lockout_seconds > 0:
            raise ValueError(f"lockout_seconds must be positive (got {lockout_seconds!r})")
        if not session_seconds > 0:
            raise ValueError(f"session_seconds must be positive (got {session_seconds!r})")
        self._store = store
        self._cache = cache
        self._secret = bytes(secret)
        self.max_attempts = max_attempts
        self.lockout_seconds = lockout_seconds
        self.session_seconds = session_seconds
        # id -> (monotonic deadline, share, locked_until); oldest first
        self._rows: dict[str, tuple[float, Share, datetime | None]] = {}

    # -- links ------------------------------------------------------------------------------

    def _mac(self, share_id: str) -> str:
        digest = hmac.digest(self._secret, b"share:" + share_id.encode(), "sha256")
        return _b64(digest)[:_MAC_CHARS]

    def token_for(self, share_id: str) -> str:
        """The link token of a share: ``{id}.{mac}``."""
        return f"{share_id}.{self._mac(share_id)}"

    def _share_id(self, token: str) -> str:
        """The id a token names, if its MAC is right; else ShareRefused("forged")."""
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            raise ShareRefused("forged")
        share_id, mac = match[1], match[2]
        if not hmac.compare_digest(self._mac(share_id).encode(), mac.encode()):
            raise ShareRefused("forged")
        return share_id

    # -- create and read --------------------------------------------------------------------

    async def create(
        self,
        person_key: str,
        scope: ShareScope,
        *,
        created_by: str,
        created_role: str,
        facility: str | None = None,
        study: str | None = None,
        visit_date: date | None = None,
        days: float = 30,
        second_factor: SecondFactor = "none",
        now: datetime | None = None,
    ) -> tuple[Share, str, str | None]:
        """Record a share; returns it, its link token, and its PIN (only when ``pin``).

        The PIN is returned this once: only its salted hash is kept. ``now`` is for tests.

        Raises
        ------
        ValueError
            A scope without what it needs (study: facility and study; visit: facility and
            visit_date; all: none of them), or with more; ``days`` not in (0, 365]; an unknown
            scope or second factor.
        """
        _validate(
            person_key,
            scope,
            facility,
            study,
            visit_date,
            days,
            second_factor,
            created_by,
            created_role,
        )
        created_at = now if now is not None else datetime.now(UTC)
        if created_at.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        pin = pin_hash = None
        if second_factor == "pin":
            pin = f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}"
            pin_hash = await asyncio.to_thread(_hash_pin, pin)
        share = Share(
            id=secrets.token_urlsafe(_ID_BYTES),
            person_key=person_key,
            scope=scope,
            facility=facility,
            study=study,
            visit_date=visit_date,
            second_factor=second_factor,
            created_by=created_by,
            created_role=created_role,
            created_at=created_at,
            expires_at=created_at + timedelta(days=days),
            revoked_at=None,
        )
        async with self._store.engine.begin() as conn:
            await conn.execute(
                share_table.insert().values(
                    id=share.id,
                    person_key=share.person_key,
                    scope=share.scope,
                    facility=share.facility,
                    study=share.study,
                    visit_date=share.visit_date,
                    second_factor=share.second_factor,
                    pin_hash=pin_hash,
                    created_by=share.created_by,
                    created_role=share.created_role,
                    created_at=share.created_at,
                    expires_at=share.expires_at,
                    failed_attempts=0,
                )
            )
        return share, self.token_for(share.id), pin

    async def _row(self, share_id: str) -> Any:
        async with self._store.engine.connect() as conn:
            return (
                await conn.execute(select(share_table).where(share_table.c.id == share_id))
            ).first()

    async def get(self, share_id: str) -> Share | None:
        """One share, whatever its state, read from the database."""
        row = await self._row(share_id)
        return _share(row) if row is not None else None

    async def for_person(self, person_key: str) -> list[Share]:
        """Every share of the person, revoked and expired ones too, newest first."""
        c = share_table.c
        stmt = (
            select(share_table)
            .where(c.person_key == person_key)
            .order_by(c.created_at.desc(), c.id)
        )
        async with self._store.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_share(r) for r in rows]

    # -- open and revoke --------------------------------------------------------------------

    def _remember(self, share: Share, locked_until: datetime | None) -> None:
        self._rows.pop(share.id, None)
        if len(self._rows) >= ROW_CACHE_ENTRIES:
            del self._rows[next(iter(self._rows))]
        self._rows[share.id] = (time.monotonic() + ROW_TTL, share, locked_until)

    def _remembered(self, share_id: str) -> tuple[Share, datetime | None] | None:
        entry = self._rows.get(share_id)
        if entry is None:
            return None
        deadline, share, locked_until = entry
        if time.monotonic() >= deadline:
            del self._rows[share_id]
            return None
        return share, locked_until

    async def open(self, token: str, *, now: datetime | None = None) -> Share:
        """The share a link token names, if it may be opened now.

        Checks, in order: the MAC, the revocation flag in the cache (on every call), the row
        (possibly reused from memory for :data:`ROW_TTL` seconds), its revocation, expiry and
        lock. When the cache fails, the row is read afresh, so revocation still holds.
        ``now`` is for tests.

        Raises
        ------
        ShareRefused
            ``forged`` (malformed, wrong MAC, no such share), ``revoked``, ``expired``, or
            ``locked`` (too many wrong second-factor answers, until the lock ends).
        """
        share_id = self._share_id(token)
        now = now if now is not None else datetime.now(UTC)
        fresh = False
        try:
            if await self._cache.get(_REVOKED_KEY + share_id) is not None:
                raise ShareRefused("revoked")
        except CacheError as exc:
            log.warning("share revocation flag unreadable, reading the share afresh: %s", exc)
            fresh = True
        kept = None if fresh else self._remembered(share_id)
        if kept is not None:
            share, locked_until = kept
            try:
                flag = await self._cache.get(_LOCKED_KEY + share_id)
            except CacheError as exc:
                log.warning("share lock flag unreadable, reading the share afresh: %s", exc)
                kept = None
            else:
                if flag is not None:
                    flagged = datetime.fromtimestamp(float(flag), UTC)
                    locked_until = max(locked_until, flagged) if locked_until else flagged
        if kept is None:
            row = await self._row(share_id)
            if row is None:
                raise ShareRefused("forged")
            share, locked_until = _share(row), row.locked_until
            self._remember(share, locked_until)
        if share.revoked_at is not None:
            raise ShareRefused("revoked")
        if now >= share.expires_at:
            raise ShareRefused("expired")
        if locked_until is not None and locked_until > now:
            raise ShareRefused("locked")
        return share

    async def revoke(self, share_id: str, *, now: datetime | None = None) -> bool:
        """Revoke a share, at once in every gateway process; False if unknown or already revoked.

        The row is revoked first, then the cache flag is set (again, for an already revoked
        share, so a retry after a cache failure completes the job).

        Raises
        ------
        CacheError
            The flag could not be set: the share is revoked in the database, and other
            processes see it within :data:`ROW_TTL` seconds; calling again sets the flag.
        """
        now = now if now is not None else datetime.now(UTC)
        c = share_table.c
        async with self._store.engine.begin() as conn:
            result = await conn.execute(
                update(share_table)
                .where(c.id == share_id, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            changed = bool(result.rowcount)
            expires_at = (
                await conn.execute(select(c.expires_at).where(c.id == share_id))
            ).scalar_one_or_none()
        self._rows.pop(share_id, None)
        if expires_at is None:
            return False
        ttl = (expires_at - now).total_seconds()
        if ttl > 0:  # an expired share is refused anyway
            await self._cache.set(_REVOKED_KEY + share_id, b"1", ttl=ttl)
        if changed:
            log.info("share %s revoked", share_id)
        return changed

    # -- second factor ----------------------------------------------------------------------

    async def check_second_factor(
        self, share: Share, answer: str, *, now: datetime | None = None
    ) -> bool:
        """Whether ``answer`` is the share's second factor; wrong answers are counted.

        ``id4``: the last 4 characters of the national ID number, any case, spaces around
        ignored; ``pin``: the PIN printed with the share. A share without a second factor
        passes. A right answer resets the count; the ``max_attempts``-th wrong one (still
        answered False) locks the share for ``lockout_seconds``. ``now`` is for tests.

        Raises
        ------
        ShareRefused
            ``locked`` while the share is locked (even for the right answer); ``forged``,
            ``revoked`` or ``expired`` if the share is no longer there or no longer valid.
        """
        if share.second_factor == "none":
            return True
        now = now if now is not None else datetime.now(UTC)
        row = await self._row(share.id)
        if row is None:
            raise ShareRefused("forged")
        if row.revoked_at is not None:
            raise ShareRefused("revoked")
        if now >= row.expires_at:
            raise ShareRefused("expired")
        if row.locked_until is not None and row.locked_until > now:
            raise ShareRefused("locked")
        answer = answer.strip() if isinstance(answer, str) else ""
        if not answer or len(answer) > MAX_ANSWER_CHARS:
            right = False
        elif row.second_factor == "id4":
            expected = row.person_key[-4:].upper()
            right = hmac.compare_digest(answer.upper().encode(), expected.encode())
        elif row.second_factor == "pin" and row.pin_hash:
            right = await asyncio.to_thread(_pin_matches, answer, row.pin_hash)
        else:
            right = False
        c = share_table.c
        not_locked = or_(c.locked_until.is_(None), c.locked_until <= now)
        async with self._store.engine.begin() as conn:
            if right:
                result = await conn.execute(
                    update(share_table)
                    .where(c.id == share.id, not_locked)
                    .values(failed_attempts=0, locked_until=None)
                )
                counted = None
            else:
                # One statement, so concurrent wrong answers in any process are all counted:
                # an ended lock starts the count again at this answer.
                failed = case((c.locked_until.is_not(None), 1), else_=c.failed_attempts + 1)
                lock_until = literal(now + timedelta(seconds=self.lockout_seconds), UtcDateTime())
                result = await conn.execute(
                    update(share_table)
                    .where(c.id == share.id, not_locked)
                    .values(
                        failed_attempts=failed,
                        locked_until=case((failed >= self.max_attempts, lock_until), else_=None),
                    )
                    .returning(c.failed_attempts, c.locked_until)
                )
                counted = result.first()
        if right:
            if not result.rowcount:  # locked by wrong answers that came in meanwhile
                raise ShareRefused("locked")
            return True
        if counted is None:
            raise ShareRefused("locked")
        if counted.locked_until is not None:
            await self._flag_lock(share, counted.locked_until, now)
        return False

    async def _flag_lock(self, share: Share, locked_until: datetime, now: datetime) -> None:
        self._rows.pop(share.id, None)
        log.info("share %s locked after %d wrong answers", share.id, self.max_attempts)
        ttl = (locked_until - now).total_seconds()
        if ttl <= 0:
            return
        try:
            await self._cache.set(
                _LOCKED_KEY + share.id, repr(locked_until.timestamp()).encode(), ttl=ttl
            )
        except CacheError as exc:
            # The lock is in the row: check_second_factor enforces it everywhere; open sees
            # it in other processes when their copy of the row expires.
            log.warning("share lock flag not set: %s", exc)

    async def attempts_left(self, share: Share, *, now: datetime | None = None) -> int:
        """Wrong answers the share still takes before it locks; 0 while it is locked."""
        now = now if now is not None else datetime.now(UTC)
        c = share_table.c
        async with self._store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(c.failed_attempts, c.locked_until).where(c.id == share.id)
                )
            ).first()
        if row is None:
            return 0
        if row.locked_until is not None:
            return 0 if row.locked_until > now else self.max_attempts
        return max(0, self.max_attempts - int(row.failed_attempts))

    # -- sessions ---------------------------------------------------------------------------

    def _session_mac(self, share_id: str, expiry: int) -> str:
        message = b"share-session:" + share_id.encode() + b":" + str(expiry).encode()
        return _b64(hmac.digest(self._secret, message, "sha256"))

    def session_cookie(self, share: Share, now: float | None = None) -> str:
        """A cookie value that a passed second factor earns: ``{expiry}.{mac}``.

        It lasts ``session_seconds``, never past the share's expiry. It says nothing of
        revocation: open the share on every request too.
        """
        now = time.time() if now is None else now
        expiry = min(int(now + self.session_seconds), int(share.expires_at.timestamp()))
        return f"{expiry}.{self._session_mac(share.id, expiry)}"

    def session_valid(self, share: Share, cookie: str | None, now: float | None = None) -> bool:
        """Whether ``cookie`` is an unexpired session cookie of this share."""
        if not isinstance(cookie, str):
            return False
        match = _COOKIE.fullmatch(cookie)
        if match is None:
            return False
        expiry = int(match[1])
        expected = self._session_mac(share.id, expiry)
        if not hmac.compare_digest(expected.encode(), match[2].encode()):
            return False
        return (time.time() if now is None else now) < expiry


# -- the secret -----------------------------------------------------------------------------


def _decode_secret(configured: str) -> bytes:
    text = "".join(configured.split())
    if not text:
        raise ConfigError("the share secret is empty")
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
        value = bytes.fromhex(text)
    else:
        try:
            padded = text + "=" * (-len(text) % 4)
            if "-" in text or "_" in text:
                value = base64.urlsafe_b64decode(padded.encode("ascii"))
            else:
                value = base64.b64decode(padded.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ConfigError("the share secret must be base64 or hex") from None
    if len(value) < SECRET_BYTES:
        raise ConfigError(
            f"the share secret must be at least {SECRET_BYTES} bytes (it has {len(value)})"
        )
    return value


def share_secret(data_dir: Path, configured: str | None = None) -> bytes:
    """The secret that signs share links and session cookies.

    ``configured`` (``HUREN_SHARE_SECRET``: base64 or hex, at least 32 bytes) if given, else
    32 random bytes kept in ``data_dir/keys/share-secret`` (mode 0600, in a 0700 directory),
    made on first use; processes racing to make it end up with the same secret. The secret is
    never logged nor put in a message.

    Raises
    ------
    ConfigError
        The configured value is not base64 or hex, or shorter than 32 bytes; or the file
        holds fewer than 32 bytes.
    """
    if configured is not None:
        return _decode_secret(configured)
    path = keys_dir(data_dir) / SECRET_FILE
    try:
        value = path.read_bytes()
    except FileNotFoundError:
        value = _create_secret(path)
    if len(value) < SECRET_BYTES:
        raise ConfigError(f"{path}: the share secret must be at least {SECRET_BYTES} bytes")
    return value


def _create_secret(path: Path) -> bytes:
    return create_once(path, secrets.token_bytes(SECRET_BYTES))


# -- QR codes -------------------------------------------------------------------------------


def _qr(url: str, kind: str, scale: int) -> bytes:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer (got {scale!r})")
    # A full QR code (never a Micro QR, which phone cameras seldom read), level M exactly.
    qr = segno.make_qr(url, error="m", boost_error=False)
    out = io.BytesIO()
    qr.save(out, kind=kind, scale=scale, border=4)
    return out.getvalue()


def qr_png(url: str, *, scale: int = 8) -> bytes:
    """A PNG of the QR code of ``url`` (error correction M, a 4-module quiet zone)."""
    return _qr(url, "png", scale)


def qr_svg(url: str, *, scale: int = 8) -> bytes:
    """An SVG document of the QR code of ``url`` (error correction M, a 4-module border)."""
    return _qr(url, "svg", scale)
