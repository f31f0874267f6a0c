"""Cloud-film shares: signed links, scopes, expiry, revocation across processes, the second
factor and its lockout, session cookies, QR codes and the share secret."""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import stat
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import segno
from PIL import Image
from sqlalchemy import select

from gateway.cache import Cache, MemoryCache, open_cache
from gateway.errors import ConfigError, GatewayError
from gateway.shares import (
    ShareRefused,
    Shares,
    covers,
    qr_png,
    qr_svg,
    share_secret,
    share_table,
)
from gateway.storage import Store

SECRET = b"s" * 32
PERSON = "11010519491231002x"  # a national ID number ending in a check character x
FACILITY = "F001"
STUDY = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


class Gateway:
    """A second gateway process: its own engine on the same database, its own connection to
    the same cache (the in-process cache can only be shared as the same object)."""

    def __init__(self, store: Store, cache: Cache) -> None:
        self.store = store
        self.cache = cache

    def shares(self, **options: Any) -> Shares:
        return Shares(self.store, self.cache, SECRET, **options)


@pytest.fixture
async def other(
    store: Store, cache: Cache, store_url: str, cache_target: tuple[str | None, str]
) -> AsyncIterator[Gateway]:
    url, namespace = cache_target
    second_store = await Store.open(store_url)
    second_cache = cache if url is None else await open_cache(url, namespace=namespace)
    try:
        yield Gateway(second_store, second_cache)
    finally:
        if url is not None:
            await second_cache.close()
        await second_store.close()


@pytest.fixture
def shares(store: Store, cache: Cache) -> Shares:
    return Shares(store, cache, SECRET)


def _refused(exc: pytest.ExceptionInfo[ShareRefused], reason: str) -> None:
    assert exc.value.reason == reason
    assert isinstance(exc.value, GatewayError)
    # No patient identifier in what a face might show.
    assert PERSON not in str(exc.value)
    assert PERSON[-4:] not in str(exc.value)
    assert STUDY not in str(exc.value)


# -- create and open --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "where"),
    [
        ("study", {"facility": FACILITY, "study": STUDY}),
        ("visit", {"facility": FACILITY, "visit_date": date(2025, 2, 27)}),
        ("all", {}),
    ],
)
async def test_create_and_open_each_scope(
    shares: Shares, scope: Any, where: dict[str, Any]
) -> None:
    share, token, pin = await shares.create(
        PERSON, scope, created_by="dr-wang", created_role="clinician", days=7, **where
    )
    assert pin is None
    assert len(share.id) == 22
    assert token == shares.token_for(share.id)
    share_id, mac = token.split(".")
    assert share_id == share.id and len(mac) == 22
    assert share.scope == scope
    assert share.person_key == PERSON
    assert share.facility == where.get("facility")
    assert share.study == where.get("study")
    assert share.visit_date == where.get("visit_date")
    assert share.second_factor == "none"
    assert share.created_by == "dr-wang" and share.created_role == "clinician"
    assert share.expires_at - share.created_at == timedelta(days=7)
    assert share.revoked_at is None

    opened = await shares.open(token)
    assert opened == share
    assert await shares.get(share.id) == share
    assert opened.created_at.tzinfo is not None and opened.expires_at.utcoffset() == timedelta(0)
    assert await shares.open(token) == share  # from the in-process copy


async def test_for_person_newest_first_and_get_unknown(shares: Shares) -> None:
    made = []
    for i in range(3):
        share, _, _ = await shares.create(
            PERSON, "all", created_by="me", created_role="resident", now=T0 + timedelta(hours=i)
        )
        made.append(share)
    await shares.create("other-person", "all", created_by="me", created_role="resident")
    assert [s.id for s in await shares.for_person(PERSON)] == [s.id for s in reversed(made)]
    assert await shares.for_person("nobody") == []
    assert await shares.get("x" * 22) is None


@pytest.mark.parametrize(
    ("scope", "kwargs", "message"),
    [
        ("study", {"facility": FACILITY}, "needs facility and study"),
        ("study", {"study": STUDY}, "needs facility and study"),
        ("study", {"facility": FACILITY, "study": STUDY, "visit_date": date(2025, 1, 1)}, "no"),
        ("visit", {"facility": FACILITY}, "needs facility and visit_date"),
        ("visit", {"visit_date": date(2025, 1, 1)}, "needs facility and visit_date"),
        ("visit", {"facility": FACILITY, "visit_date": date(2025, 1, 1), "study": STUDY}, "no"),
        ("all", {"facility": FACILITY}, "takes no"),
        ("all", {"study": STUDY}, "takes no"),
        ("all", {"visit_date": date(2025, 1, 1)}, "takes no"),
        ("all", {"days": 0}, "days"),
        ("all", {"days": -1}, "days"),
        ("all", {"days": 365.5}, "days"),
        ("all", {"days": float("nan")}, "days"),
        ("all", {"second_factor": "sms"}, "second_factor"),
        ("everything", {}, "scope"),
        ("study", {"facility": "F" * 17, "study": STUDY}, "facility"),
        ("study", {"facility": FACILITY, "study": "1." * 40}, "study"),
        ("visit", {"facility": FACILITY, "visit_date": "2025-01-01"}, "date"),
    ],
)
async def test_create_validates(
    shares: Shares, scope: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await shares.create(PERSON, scope, created_by="me", created_role="resident", **kwargs)


async def test_create_at_the_limits(shares: Shares) -> None:
    share, _, _ = await shares.create(
        PERSON, "all", created_by="me", created_role="resident", days=365
    )
    assert share.expires_at - share.created_at == timedelta(days=365)
    with pytest.raises(ValueError, match="person key"):
        await shares.create("123", "all", created_by="me", created_role="r", second_factor="id4")
    with pytest.raises(ValueError, match="person_key"):
        await shares.create("", "all", created_by="me", created_role="resident")


async def test_covers(shares: Shares) -> None:
    day = date(2025, 2, 27)
    study, _, _ = await shares.create(
        PERSON, "study", created_by="me", created_role="r", facility=FACILITY, study=STUDY
    )
    visit, _, _ = await shares.create(
        PERSON, "visit", created_by="me", created_role="r", facility=FACILITY, visit_date=day
    )
    everything, _, _ = await shares.create(PERSON, "all", created_by="me", created_role="r")
    assert covers(study, FACILITY, study=STUDY, day=None)
    assert not covers(study, "F002", study=STUDY, day=None)
    assert not covers(study, FACILITY, study="1.2.3", day=day)
    assert not covers(study, FACILITY, study=None, day=day)  # a lab result: not this study
    assert covers(visit, FACILITY, study="1.2.3", day=day)
    assert covers(visit, FACILITY, study=None, day=day)
    assert not covers(visit, FACILITY, study=STUDY, day=day + timedelta(days=1))
    assert not covers(visit, FACILITY, study=STUDY, day=None)
    assert not covers(visit, "F002", study=STUDY, day=day)
    assert covers(everything, "F002", study=None, day=None)


# -- refusals ---------------------------------------------------------------------------------


async def test_forged_tokens(shares: Shares, store: Store, cache: Cache) -> None:
    share, token, _ = await shares.create(PERSON, "all", created_by="me", created_role="r")
    share_id, mac = token.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    unknown = secrets.token_urlsafe(16)
    other_secret = Shares(store, cache, b"t" * 32)
    forgeries = [
        f"{share_id}.{flipped}",  # bad mac
        token[:-1],  # truncated
        token[:22],  # the id alone
        f"{share_id}.",
        shares.token_for(unknown),  # right mac, no such share
        other_secret.token_for(share_id),  # signed with another secret
        "garbage",
        "",
        "../../etc/passwd",
        token + ".x",
        f"{share_id}.{mac}=",
        "é" * 22 + "." + mac,
    ]
    for forged in forgeries:
        with pytest.raises(ShareRefused) as exc:
            await shares.open(forged)
        _refused(exc, "forged")
    assert await shares.open(token) == share


async def test_expired(shares: Shares) -> None:
    share, token, _ = await shares.create(
        PERSON, "all", created_by="me", created_role="r", days=1, now=T0
    )
    assert share.expires_at == T0 + timedelta(days=1)
    assert await shares.open(token, now=T0 + timedelta(hours=23)) == share
    for when in (T0 + timedelta(days=1), T0 + timedelta(days=2), datetime.now(UTC)):
        with pytest.raises(ShareRefused) as exc:
            await shares.open(token, now=when)
        _refused(exc, "expired")


async def test_expires_by_the_real_clock(shares: Shares) -> None:
    _, token, _ = await shares.create(
        PERSON, "all", created_by="me", created_role="r", days=0.5 / 86400
    )
    await shares.open(token)
    await asyncio.sleep(0.6)
    with pytest.raises(ShareRefused) as exc:
        await shares.open(token)
    _refused(exc, "expired")


async def test_revoke_takes_effect_at_once_in_every_process(
    shares: Shares, cache: Cache, other: Gateway
) -> None:
    elsewhere = other.shares()
    share, token, _ = await shares.create(PERSON, "all", created_by="me", created_role="r")
    # Both processes have opened it: each keeps the row in memory for a few seconds.
    assert await shares.open(token) == share
    assert await elsewhere.open(token) == share

    assert await elsewhere.revoke(share.id) is True
    for gateway in (shares, elsewhere):
        with pytest.raises(ShareRefused) as exc:
            await gateway.open(token)
        _refused(exc, "revoked")
    revoked = await shares.get(share.id)
    assert revoked is not None and revoked.revoked_at is not None

    assert await shares.revoke(share.id) is False  # already revoked
    assert await shares.revoke("no-such-share-id-00000") is False

    # The row says so too, without the flag (a third process, nothing in memory).
    await cache.delete(f"share-revoked:{share.id}")
    with pytest.raises(ShareRefused) as exc:
        await other.shares().open(token)
    _refused(exc, "revoked")
    # Revoking again puts the flag back (a retry after a cache failure).
    assert await shares.revoke(share.id) is False
    assert await cache.get(f"share-revoked:{share.id}") is not None


async def test_revocation_flag_lives_until_the_share_expires(store: Store) -> None:
    seen: list[tuple[str, float | None]] = []

    class Recording(MemoryCache):
        async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
            seen.append((key, ttl))
            await super().set(key, value, ttl)

    shares = Shares(store, Recording(), SECRET)
    share, _, _ = await shares.create(PERSON, "all", created_by="me", created_role="r", days=2)
    assert await shares.revoke(share.id)
    [(key, ttl)] = seen
    assert key == f"share-revoked:{share.id}"
    assert ttl is not None and 2 * 86400 - 60 < ttl <= 2 * 86400


async def test_open_reads_the_row_when_the_cache_fails(store: Store) -> None:
    from gateway.cache import CacheError

    class Broken(MemoryCache):
        broken = False

        async def get(self, key: str) -> bytes | None:
            if self.broken:
                raise CacheError("down")
            return await super().get(key)

    cache = Broken()
    shares = Shares(store, cache, SECRET)
    share, token, _ = await shares.create(PERSON, "all", created_by="me", created_role="r")
    assert await shares.open(token) == share  # now kept in memory
    other = Shares(store, MemoryCache(), SECRET)
    assert await other.revoke(share.id)  # flagged in a cache the first never sees
    cache.broken = True
    with pytest.raises(ShareRefused) as exc:
        await shares.open(token)
    _refused(exc, "revoked")


# -- second factor ----------------------------------------------------------------------------


async def test_no_second_factor_passes(shares: Shares) -> None:
    share, _, pin = await shares.create(PERSON, "all", created_by="me", created_role="r")
    assert pin is None
    assert await shares.check_second_factor(share, "anything") is True


async def test_id4(shares: Shares) -> None:
    share, token, pin = await shares.create(
        PERSON, "all", created_by="me", created_role="r", second_factor="id4"
    )
    assert pin is None and share.second_factor == "id4"
    assert await shares.attempts_left(share) == 5
    assert await shares.check_second_factor(share, "1002") is False  # not the last four
    assert await shares.check_second_factor(share, "") is False
    assert await shares.attempts_left(share) == 3
    assert await shares.check_second_factor(share, " 002x ") is True  # any case, spaces
    assert await shares.attempts_left(share) == 5  # a right answer resets the count
    assert await shares.check_second_factor(share, "02X") is False
    assert await shares.attempts_left(share) == 4
    assert await shares.open(token) == share


async def test_pin(shares: Shares, store: Store) -> None:
    share, _, pin = await shares.create(
        PERSON,
        "visit",
        created_by="me",
        created_role="r",
        facility=FACILITY,
        visit_date=date(2025, 2, 27),
        second_factor="pin",
    )
    assert pin is not None and len(pin) == 6 and pin.isdigit()
    async with store.engine.connect() as conn:
        stored = (
            await conn.execute(select(share_table.c.pin_hash).where(share_table.c.id == share.id))
        ).scalar_one()
    assert stored is not None and pin not in stored and stored.startswith("scrypt$")
    wrong = f"{(int(pin) + 1) % 1_000_000:06d}"
    assert await shares.check_second_factor(share, wrong) is False
    assert await shares.check_second_factor(share, pin + "0") is False
    assert await shares.check_second_factor(share, "x" * 10_000) is False
    assert await shares.attempts_left(share) == 2
    assert await shares.check_second_factor(share, f" {pin} ") is True
    assert await shares.attempts_left(share) == 5
    # Each share has its own PIN and salt.
    second, _, pin2 = await shares.create(
        PERSON, "all", created_by="me", created_role="r", second_factor="pin"
    )
    assert pin2 is not None
    async with store.engine.connect() as conn:
        stored2 = (
            await conn.execute(select(share_table.c.pin_hash).where(share_table.c.id == second.id))
        ).scalar_one()
    assert stored2 != stored


@pytest.mark.parametrize("factor", ["id4", "pin"])
async def test_lockout_is_seen_by_every_process(
    store: Store, cache: Cache, other: Gateway, factor: Any
) -> None:
    here = Shares(store, cache, SECRET, max_attempts=3, lockout_seconds=600)
    elsewhere = other.shares(max_attempts=3, lockout_seconds=600)
    share, token, pin = await here.create(
        PERSON, "all", created_by="me", created_role="r", second_factor=factor
    )
    right = pin if pin is not None else PERSON[-4:]
    assert await elsewhere.open(token) == share  # kept in that process's memory
    for left in (2, 1, 0):
        assert await here.check_second_factor(share, "0000") is False
        assert await here.attempts_left(share) == left
    assert await elsewhere.attempts_left(share) == 0
    for gateway in (here, elsewhere):
        with pytest.raises(ShareRefused) as exc:
            await gateway.check_second_factor(share, right)  # even the right answer
        _refused(exc, "locked")
        with pytest.raises(ShareRefused) as exc:
            await gateway.open(token)
        _refused(exc, "locked")

    # When the lock ends, the count starts again.
    later = datetime.now(UTC) + timedelta(seconds=601)
    assert await elsewhere.open(token, now=later) == share
    assert await elsewhere.attempts_left(share, now=later) == 3
    assert await elsewhere.check_second_factor(share, "0000", now=later) is False
    assert await here.attempts_left(share, now=later) == 2
    assert await here.check_second_factor(share, right, now=later) is True
    assert await here.attempts_left(share, now=later) == 3


async def test_wrong_answers_from_two_processes_are_all_counted(
    store: Store, cache: Cache, other: Gateway
) -> None:
    here = Shares(store, cache, SECRET, max_attempts=20)
    elsewhere = other.shares(max_attempts=20)
    share, _, _ = await here.create(
        PERSON, "all", created_by="me", created_role="r", second_factor="id4"
    )
    answers = await asyncio.gather(
        *(g.check_second_factor(share, f"{i:04d}") for i in range(6) for g in (here, elsewhere))
    )
    assert answers == [False] * 12
    assert await here.attempts_left(share) == 8
    assert await elsewhere.attempts_left(share) == 8


async def test_concurrent_wrong_answers_lock_exactly_once(
    store: Store, cache: Cache, other: Gateway
) -> None:
    here = Shares(store, cache, SECRET, max_attempts=5)
    elsewhere = other.shares(max_attempts=5)
    share, _, pin = await here.create(
        PERSON, "all", created_by="me", created_role="r", second_factor="pin"
    )
    assert pin is not None
    wrong = f"{(int(pin) + 1) % 1_000_000:06d}"
    outcomes = await asyncio.gather(
        *(g.check_second_factor(share, wrong) for _ in range(4) for g in (here, elsewhere)),
        return_exceptions=True,
    )
    # Five wrong answers were counted (the fifth locked it); the rest met the lock.
    assert outcomes.count(False) == 5
    refused = [o for o in outcomes if isinstance(o, ShareRefused)]
    assert len(refused) == 3 and {r.reason for r in refused} == {"locked"}
    assert await here.attempts_left(share) == 0


async def test_second_factor_of_a_revoked_or_expired_share(shares: Shares) -> None:
    share, _, _ = await shares.create(
        PERSON, "all", created_by="me", created_role="r", second_factor="id4", days=1, now=T0
    )
    with pytest.raises(ShareRefused) as exc:
        await shares.check_second_factor(share, PERSON[-4:])
    _refused(exc, "expired")
    live, _, _ = await shares.create(
        PERSON, "all", created_by="me", created_role="r", second_factor="id4"
    )
    assert await shares.revoke(live.id)
    with pytest.raises(ShareRefused) as exc:
        await shares.check_second_factor(live, PERSON[-4:])
    _refused(exc, "revoked")


# -- session cookies --------------------------------------------------------------------------


async def test_session_cookie(shares: Shares, store: Store, cache: Cache) -> None:
    share, _, _ = await shares.create(PERSON, "all", created_by="me", created_role="r")
    another, _, _ = await shares.create(PERSON, "all", created_by="me", created_role="r")
    now = datetime.now(UTC).timestamp()
    cookie = shares.session_cookie(share, now=now)
    expiry, mac = cookie.split(".")
    assert int(expiry) == int(now + 1800)
    assert shares.session_valid(share, cookie, now=now)
    assert shares.session_valid(share, cookie)
    assert shares.session_valid(share, cookie, now=now + 1799)
    assert not shares.session_valid(share, cookie, now=now + 1800)  # expired
    assert not shares.session_valid(another, cookie, now=now)  # another share's
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (
        f"{expiry}.{flipped}",
        f"{int(expiry) + 3600}.{mac}",  # a longer life, same mac
        cookie[:-1],
        expiry,
        "",
        None,
        "garbage",
        cookie + "x",
    ):
        assert not shares.session_valid(share, bad, now=now)
    other_secret = Shares(store, cache, b"t" * 32)
    assert not other_secret.session_valid(share, cookie, now=now)


async def test_session_never_outlives_the_share(shares: Shares) -> None:
    share, _, _ = await shares.create(
        PERSON, "all", created_by="me", created_role="r", days=600 / 86400
    )
    now = datetime.now(UTC).timestamp()
    cookie = shares.session_cookie(share, now=now)
    assert int(cookie.split(".")[0]) == int(share.expires_at.timestamp())
    assert not shares.session_valid(share, cookie, now=share.expires_at.timestamp())


def test_shares_options_are_checked() -> None:
    store: Any = object()
    cache = MemoryCache()
    with pytest.raises(ValueError, match="32 bytes"):
        Shares(store, cache, b"short")
    with pytest.raises(ValueError, match="max_attempts"):
        Shares(store, cache, SECRET, max_attempts=0)
    with pytest.raises(ValueError, match="lockout_seconds"):
        Shares(store, cache, SECRET, lockout_seconds=0)
    with pytest.raises(ValueError, match="session_seconds"):
        Shares(store, cache, SECRET, session_seconds=-1)


def test_share_refused_reasons() -> None:
    for reason in ("forged", "expired", "revoked", "locked", "second-factor"):
        refused = ShareRefused(reason)
        assert refused.reason == reason and refused.detail == str(refused)
    assert repr(ShareRefused("locked")) == "ShareRefused('locked')"


# -- QR codes ---------------------------------------------------------------------------------


def test_qr_png_holds_the_code() -> None:
    url = "https://huren.example/s/AbCdEfGhIjKlMnOpQrStUv.0123456789abcdefghijkl"
    png = qr_png(url, scale=4)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # No QR decoder here: compare the picture's modules with the code segno makes.
    expected = segno.make_qr(url, error="m", boost_error=False)
    assert expected.error == "M" and not expected.is_micro
    image = Image.open(io.BytesIO(png)).convert("L")
    side = len(expected.matrix) + 8  # a 4-module quiet zone each side
    assert image.size == (side * 4, side * 4)
    for y in range(side):
        for x in range(side):
            dark = image.getpixel((x * 4 + 2, y * 4 + 2)) == 0
            inside = 4 <= x < side - 4 and 4 <= y < side - 4
            assert dark == (inside and bool(expected.matrix[y - 4][x - 4])), (x, y)
    assert len(qr_png(url)) > 0
    with pytest.raises(ValueError, match="scale"):
        qr_png(url, scale=0)


def test_qr_svg() -> None:
    svg = qr_svg("https://huren.example/s/x.y", scale=3)
    assert svg.startswith(b"<?xml")
    assert b"<svg" in svg and svg.rstrip().endswith(b"</svg>")


# -- the secret -------------------------------------------------------------------------------


def test_share_secret_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = share_secret(data_dir)
    path = data_dir / "keys" / "share-secret"
    assert len(first) == 32 and path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert share_secret(data_dir) == first  # made once, then read back
    assert share_secret(tmp_path / "elsewhere") != first
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="32 bytes"):
        share_secret(data_dir)


def test_share_secret_configured(tmp_path: Path) -> None:
    raw = secrets.token_bytes(32)
    assert share_secret(tmp_path, raw.hex()) == raw
    assert share_secret(tmp_path, raw.hex().upper()) == raw
    assert share_secret(tmp_path, base64.b64encode(raw).decode()) == raw
    assert share_secret(tmp_path, base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert share_secret(tmp_path, f"  {base64.b64encode(raw + raw).decode()}\n") == raw + raw
    assert not (tmp_path / "keys").exists()  # nothing written when configured
    for bad in ("", "   ", "00" * 31, base64.b64encode(b"x" * 20).decode(), "not base64!"):
        with pytest.raises(ConfigError) as exc:
            share_secret(tmp_path, bad)
        if bad.strip():
            assert bad not in str(exc.value)  # the value is never echoed


async def test_shares_open_with_a_file_secret(tmp_path: Path, store: Store, cache: Cache) -> None:
    secret = share_secret(tmp_path)
    share, token, _ = await Shares(store, cache, secret).create(
        PERSON, "all", created_by="me", created_role="r"
    )
    # Another process reads the same file: the link opens there too.
    assert await Shares(store, cache, share_secret(tmp_path)).open(token) == share
    with pytest.raises(ShareRefused):
        await Shares(store, cache, share_secret(tmp_path / "other")).open(token)
