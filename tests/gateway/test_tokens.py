"""Bearer JWTs: verified against the configured keys, refused with the reason, cached; scopes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import ConfigError
from gateway.tokens import (
    DEFAULT_AUDIENCE,
    DEV_ISSUER,
    Principal,
    TokenError,
    TokenVerifier,
    bearer_token,
    dev_keys,
    jwk_thumbprint,
    mint,
    parse_scope,
    public_jwk,
)

REPO = Path(__file__).resolve().parents[2]


class Keys:
    """An ES256 and an RS256 key pair and the JWKS holding both public keys."""

    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_jwk = public_jwk(self.ec)
        self.rsa_jwk = public_jwk(self.rsa)
        self.jwks = {"keys": [self.ec_jwk, self.rsa_jwk]}
        self.ec_pem = self.ec.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def verifier(self, **options: Any) -> TokenVerifier:
        return TokenVerifier(self.jwks, issuer=DEV_ISSUER, audience=DEFAULT_AUDIENCE, **options)

    def sign(
        self, claims: dict[str, Any], *, alg: str = "ES256", kid: str | None = "", key: Any = None
    ) -> str:
        """Sign claims (defaults filled in) with the matching key; kid "" means the right one."""
        now = int(time.time())
        payload = {
            "iss": DEV_ISSUER,
            "aud": DEFAULT_AUDIENCE,
            "sub": "dr-li",
            "role": "clinician",
            "facility": "F001",
            "scope": "user/*.rs",
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        jwk = self.ec_jwk if alg == "ES256" else self.rsa_jwk
        headers = {} if kid is None else {"kid": kid or jwk["kid"]}
        if key is None:
            key = self.ec if alg == "ES256" else self.rsa
        return jwt.encode(payload, key, algorithm=alg, headers=headers)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def _refused(verifier: TokenVerifier, token: str, *words: str) -> TokenError:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    exc = caught.value
    assert exc.error == "invalid_token"
    for word in words:
        assert word in exc.description, exc.description
    if len(token) > 8:
        assert token not in exc.description and token not in exc.www_authenticate()
    return exc


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_es256_token_round_trips_to_a_principal(keys: Keys) -> None:
    """Every claim Huren reads lands in the Principal."""
    token = mint(
        keys.ec_pem,
        keys.ec_jwk["kid"],
        subject="dr-li",
        role="clinician",
        facility="F001",
        purpose_of_use="TREAT",
        name="李医生",
        lifetime=600,
    )
    p = keys.verifier().verify(token)
    assert (p.subject, p.role, p.facility_id) == ("dr-li", "clinician", "F001")
    assert p.scopes == frozenset({"user/*.rs", "user/Basic.c"})  # and record decisions
    assert (p.purpose_of_use, p.name, p.patient) == ("TREAT", "李医生", None)
    assert p.token_id and p.expires_at == pytest.approx(time.time() + 600, abs=5)


def test_rs256_token_verifies_against_the_same_key_set(keys: Keys) -> None:
    """An RSA key in the JWKS verifies RS256 tokens beside the EC key."""
    token = keys.sign(
        {"sub": "lab-bot", "role": "service", "facility": None, "scope": "system/*.rs"}, alg="RS256"
    )
    p = keys.verifier().verify(token)
    assert (p.subject, p.role, p.facility_id) == ("lab-bot", "service", None)


def test_token_without_kid_uses_the_one_key_of_its_algorithm(keys: Keys) -> None:
    """No kid, one ES256 key in the set: that key verifies."""
    assert keys.verifier().verify(keys.sign({}, kid=None)).subject == "dr-li"


def test_token_naming_an_unknown_kid_is_refused(keys: Keys) -> None:
    """A kid the key set lacks is named in the refusal."""
    _refused(keys.verifier(), keys.sign({}, kid="elsewhere"), "no key 'elsewhere'")


def test_forged_token_with_the_right_kid_is_refused(keys: Keys) -> None:
    """Signed by another key under our kid: bad signature."""
    forger = ec.generate_private_key(ec.SECP256R1())
    _refused(keys.verifier(), keys.sign({"role": "admin"}, key=forger), "bad signature")


def test_tampered_payload_is_refused(keys: Keys) -> None:
    """A payload changed after signing (clinician made admin) breaks the signature."""
    head, payload, sig = keys.sign({}).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    _refused(keys.verifier(), f"{head}.{_b64(claims)}.{sig}", "bad signature")


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"exp": int(time.time()) - 120}, ["expired"]),
        ({"nbf": int(time.time()) + 3600}, ["not valid yet"]),
        ({"iat": int(time.time()) + 3600}, ["not valid yet"]),
        ({"aud": "another-gateway"}, ["wrong audience", "'huren'"]),
        ({"iss": "https://idp.example"}, ["wrong issuer", DEV_ISSUER]),
        ({"exp": None}, ["missing claim 'exp'"]),
        ({"sub": None}, ["missing claim 'sub'"]),
        ({"role": None}, ["missing claim 'role'"]),
        ({"role": "superuser"}, ["unknown role 'superuser'"]),
        ({"facility": None}, ["missing claim 'facility'", "clinician"]),
        ({"role": "integrator", "facility": None}, ["missing claim 'facility'"]),
        ({"role": "resident", "scope": "patient/*.rs"}, ["missing claim 'patient'"]),
        ({"role": "service", "scope": "user/*.rs"}, ["system/ scopes only"]),
        ({"scope": "system/*.rs"}, ["system/ scopes are for role service"]),
        ({"scope": 42}, ["malformed claim 'scope'"]),
        ({"exp": "tomorrow"}, ["malformed claim 'exp'"]),
    ],
)
def test_invalid_claims_are_refused_with_the_reason(
    keys: Keys, claims: dict[str, Any], words: list[str]
) -> None:
    """Each problem is named in the description."""
    _refused(keys.verifier(), keys.sign(claims), *words)


def test_leeway_tolerates_a_little_clock_skew(keys: Keys) -> None:
    """Expired 10 s ago passes a 30 s leeway, not a 0 s one."""
    token = keys.sign({"exp": int(time.time()) - 10})
    assert keys.verifier().verify(token).subject == "dr-li"
    _refused(keys.verifier(leeway=0), token, "expired")


def test_alg_none_is_refused(keys: Keys) -> None:
    """An unsigned token ("alg": "none") is never accepted."""
    claims = {"iss": DEV_ISSUER, "aud": "huren", "sub": "x", "role": "admin", "exp": 2**33}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    _refused(keys.verifier(), token, "unsupported algorithm 'none'")


def test_hs256_signed_with_the_public_key_is_refused(keys: Keys) -> None:
    """Key confusion: HMAC keyed with the published public key is refused as an algorithm."""
    public_pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": keys.rsa_jwk["kid"]})
    claims = {"iss": DEV_ISSUER, "aud": "huren", "sub": "x", "role": "admin", "exp": 2**33}
    signing_input = f"{header}.{_b64(claims)}".encode()
    sig = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    token = f"{signing_input.decode()}.{sig.rstrip(b'=').decode()}"
    _refused(keys.verifier(), token, "unsupported algorithm 'HS256'")


def test_symmetric_algorithms_cannot_be_configured(keys: Keys) -> None:
    """A verifier never accepts HS256, even when asked to."""
    with pytest.raises(ConfigError, match="asymmetric"):
        keys.verifier(algorithms=("ES256", "HS256"))


def test_rs256_token_under_the_ec_kid_is_refused(keys: Keys) -> None:
    """A token's alg must be its key's: RS256 under the EC key's kid is refused."""
    token = keys.sign({}, alg="RS256", kid=keys.ec_jwk["kid"])
    _refused(keys.verifier(), token, "does not match")


@pytest.mark.parametrize("garbage", ["", "not-a-token", "a.b.c", "Bearer x.y.z", "....", "é.é.é"])
def test_garbage_is_refused_as_malformed(keys: Keys, garbage: str) -> None:
    """Anything but a JWT is malformed, not a crash."""
    _refused(keys.verifier(), garbage, "malformed")


def test_jwks_with_a_private_key_is_refused(keys: Keys) -> None:
    """Publishing a private key by mistake is a configuration error."""
    private = jwt.algorithms.ECAlgorithm.to_jwk(keys.ec, as_dict=True)
    with pytest.raises(ConfigError, match="private key"):
        TokenVerifier({"keys": [private]}, issuer=DEV_ISSUER, audience="huren")


def test_hmac_key_in_the_jwks_is_never_used(keys: Keys) -> None:
    """An "oct" key is skipped: a set of only that holds no usable key."""
    oct_key = {"kty": "oct", "k": "c2VjcmV0", "kid": "s"}
    with pytest.raises(ConfigError, match="no key"):
        TokenVerifier({"keys": [oct_key]}, issuer=DEV_ISSUER, audience="huren")


def test_cache_returns_the_same_principal_and_still_expires(keys: Keys) -> None:
    """A cached token is one lookup, and is refused once the clock passes its exp."""
    now = [time.time()]
    verifier = keys.verifier(leeway=0, clock=lambda: now[0])
    token = keys.sign({"exp": int(now[0]) + 60})
    first = verifier.verify(token)
    assert verifier.verify(token) is first
    now[0] += 61
    _refused(verifier, token, "expired")
    _refused(verifier, token, "expired")  # and not cached as valid again


def test_cache_is_bounded(keys: Keys) -> None:
    """The least recently used token leaves first when the cache is full."""
    verifier = keys.verifier(cache_size=2)
    a, b, c = (keys.sign({"sub": s}) for s in "abc")
    pa = verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now the most recent
    verifier.verify(c)  # evicts b
    assert verifier.verify(a) is pa
    assert len(verifier._cache) == 2 and b not in verifier._cache


def test_smart_v2_scopes() -> None:
    """user/ImagingStudy.rs allows reading and searching ImagingStudy, nothing else."""
    p = Principal("dr-li", "clinician", "F001", frozenset({"user/ImagingStudy.rs", "openid"}))
    assert p.allows("ImagingStudy", "r") and p.allows("ImagingStudy", "s")
    assert not p.allows("Observation", "r")
    assert not p.allows("ImagingStudy", "c")
    assert p.contexts("ImagingStudy", "r") == {"user"}
    with pytest.raises(ValueError, match="interaction"):
        p.allows("ImagingStudy", "read")


def test_system_wildcard_scope() -> None:
    """system/*.rs reads and searches every type in the system context."""
    p = Principal("lab-bot", "service", None, frozenset({"system/*.rs"}))
    assert p.allows("Observation", "s") and p.allows("DiagnosticReport", "r")
    assert not p.allows("Observation", "u")
    assert p.contexts("Observation", "r") == {"system"}


def test_smart_v1_scopes() -> None:
    """v1 .read is rs, .write is cud, .* is everything."""
    p = Principal("r1", "resident", None, frozenset({"patient/Observation.read"}), patient="P1")
    assert p.allows("Observation", "r") and p.allows("Observation", "s")
    assert not p.allows("Observation", "c") and not p.allows("ImagingStudy", "r")
    assert p.contexts("Observation", "s") == {"patient"}
    w = Principal("a", "admin", None, frozenset({"user/Endpoint.write", "user/AuditEvent.*"}))
    assert [w.allows("Endpoint", i) for i in "cruds"] == [True, False, True, True, False]
    assert all(w.allows("AuditEvent", i) for i in "cruds")


@pytest.mark.parametrize(
    ("scope", "parsed"),
    [
        ("user/*.cruds", ("user", "*", "cruds")),
        ("patient/Observation.rs", ("patient", "Observation", "rs")),
        ("user/Observation.sr", None),  # letters out of order
        ("user/Observation.", None),
        ("patient/Observation.rs?category=laboratory", None),  # granular: not evaluated
        ("launch/patient", None),
        ("openid", None),
    ],
)
def test_parse_scope(scope: str, parsed: tuple[str, str, str] | None) -> None:
    """Only well-formed SMART resource scopes grant anything."""
    assert parse_scope(scope) == parsed


def test_bearer_header_parsing() -> None:
    """`Bearer <token>` gives the token; anything else is invalid_request."""
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in ("Basic dXNlcg==", "Bearer", "Bearer a b"):
        with pytest.raises(TokenError) as caught:
            bearer_token(bad)
        assert (caught.value.error, caught.value.status) == ("invalid_request", 400)


def test_www_authenticate_is_a_safe_header() -> None:
    """Quotes and line breaks never reach the header value."""
    exc = TokenError('bad "x"\r\nSet-Cookie: y')
    assert exc.www_authenticate() == (
        'Bearer realm="huren", error="invalid_token", error_description="bad \'x\'  Set-Cookie: y"'
    )
    assert exc.status == 401


def test_mint_refuses_claims_verify_would_refuse(keys: Keys) -> None:
    """mint says what is missing rather than sign a token that cannot verify."""
    with pytest.raises(ValueError, match="facility"):
        mint(keys.ec_pem, "k", subject="dr", role="clinician")
    with pytest.raises(ValueError, match="patient"):
        mint(keys.ec_pem, "k", subject="me", role="resident")


def test_default_scopes_by_role_verify(keys: Keys) -> None:
    """Every role's default token verifies."""
    verifier = keys.verifier()
    for role, extra in [
        ("clinician", {"facility": "F001"}),
        ("resident", {"patient": "P0001"}),
        ("integrator", {"facility": "F002"}),
        ("regulator", {}),
        ("admin", {}),
        ("service", {}),
    ]:
        token = mint(keys.ec_pem, keys.ec_jwk["kid"], subject="s", role=role, **extra)  # type: ignore[arg-type]
        assert verifier.verify(token).role == role


def test_dev_keys_are_private_and_stable(tmp_path: Path) -> None:
    """Made once with 0600/0700; later calls return the same key and JWKS."""
    pem, jwks = dev_keys(tmp_path)
    key_dir = tmp_path / "keys"
    assert stat.S_IMODE((key_dir / "dev-es256.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert json.loads((key_dir / "jwks.json").read_text()) == jwks
    assert dev_keys(tmp_path) == (pem, jwks)
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == jwk_thumbprint(jwk) and "d" not in jwk
    assert sorted(p.name for p in key_dir.iterdir()) == ["dev-es256.pem", "jwks.json"]


def test_jwk_thumbprint_matches_rfc7638_example() -> None:
    """RFC 7638 section 3.1's example RSA key gives the RFC's thumbprint."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
        "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vM"
        "QFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_for_settings_uses_dev_keys_and_requires_an_issuer_with_a_jwks(tmp_path: Path) -> None:
    """No auth_jwks: the dev keys and issuer; auth_jwks without auth_issuer: refused."""
    pem, jwks = dev_keys(tmp_path)
    verifier = TokenVerifier.for_settings(tmp_path, None, None, "huren")
    token = mint(pem, jwks["keys"][0]["kid"], subject="a", role="admin")
    assert verifier.verify(token).role == "admin"
    jwks_file = str(tmp_path / "keys" / "jwks.json")
    with pytest.raises(ConfigError, match="auth_issuer"):
        TokenVerifier.for_settings(tmp_path, jwks_file, None, "huren")
    from_file = TokenVerifier.for_settings(tmp_path, jwks_file, DEV_ISSUER, "huren")
    assert from_file.verify(token).subject == "a"


def _huren(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(data_dir), "token", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_huren_token_prints_a_token_the_dev_keys_verify(tmp_path: Path) -> None:
    """`huren token --role clinician --facility F001`: one line, valid against the dev JWKS."""
    done = _huren(tmp_path, "--role", "clinician", "--facility", "F001")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    _, jwks = dev_keys(tmp_path)
    verifier = TokenVerifier(jwks, issuer=DEV_ISSUER, audience=DEFAULT_AUDIENCE)
    p = verifier.verify(lines[0])
    assert (p.role, p.facility_id, p.purpose_of_use) == ("clinician", "F001", "TREAT")
    assert p.allows("ImagingStudy", "s")


def test_huren_token_refuses_a_clinician_without_facility(tmp_path: Path) -> None:
    """Exit 2 with a one-line reason, no traceback."""
    done = _huren(tmp_path, "--role", "clinician")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "facility" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def jwks_url(keys: Keys) -> Iterator[tuple[str, list[int]]]:
    """The key set served over HTTP on an ephemeral loopback port; the list counts fetches."""
    fetches: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(1)
            body = json.dumps(keys.jwks).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", fetches
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_jwks_url_is_fetched_once_and_refetched_at_most_once_per_interval(
    keys: Keys, jwks_url: tuple[str, list[int]]
) -> None:
    """Keys come from the URL on first need; unknown kids do not hammer the provider."""
    url, fetches = jwks_url
    verifier = TokenVerifier.from_jwks_source(url, issuer=DEV_ISSUER)
    assert verifier.verify(keys.sign({})).subject == "dr-li"
    assert verifier.verify(keys.sign({"sub": "b"}, alg="RS256")).subject == "b"
    assert len(fetches) == 1
    _refused(verifier, keys.sign({}, kid="rotated"), "no key 'rotated'")
    assert len(fetches) == 1  # fetched less than refetch_interval ago
    verifier.refetch_interval = 0
    _refused(verifier, keys.sign({}, kid="rotated-2"), "no key")
    assert len(fetches) == 2


async def test_refresh_fetches_off_the_event_loop(
    keys: Keys, jwks_url: tuple[str, list[int]]
) -> None:
    """`await refresh()` loads the keys so verify never fetches on the loop."""
    url, fetches = jwks_url
    verifier = TokenVerifier.from_jwks_source(url, issuer=DEV_ISSUER)
    await verifier.refresh()
    assert len(fetches) == 1
    assert verifier.verify(keys.sign({})).role == "clinician"
    assert len(fetches) == 1


def test_unreachable_jwks_url_refuses_tokens_without_crashing(keys: Keys) -> None:
    """A provider that is down means no known key, a TokenError, not a 500."""
    verifier = TokenVerifier.from_jwks_source("http://127.0.0.1:9/jwks.json", issuer=DEV_ISSUER)
    _refused(verifier, keys.sign({}), "no key")
