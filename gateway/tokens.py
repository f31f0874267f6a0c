"""Bearer tokens: OAuth 2.0 access tokens as signed JWTs (RFC 6750, RFC 9068), SMART scopes.

A client sends ``Authorization: Bearer <JWT>``. `TokenVerifier.verify` checks the signature
(ES256 or RS256, never HMAC and never ``none``) against configured public keys (a JWKS file or
URL), the issuer, the audience and the validity window, and turns the claims into a
`Principal`: who (``sub``), in which role, for which facility, with which SMART scopes and
purpose of use. A verified token is cached until it expires, so a client that reuses its
token costs one dict lookup per request.

For the demo and development, `dev_keys` keeps an ES256 key pair in the data dir and `mint`
signs tokens with it (``huren token``).

Claims Huren reads, besides the registered ones (``iss``, ``aud``, ``sub``, ``exp``, ``nbf``,
``iat``, ``jti``):

=================  ========================================================================
``role``           one of `ROLES`; required
``facility``       the registry id (``F001``) the user acts for; required for clinician and
                   integrator
``scope``          space-separated SMART scopes (a JSON list of strings is accepted too)
``purpose_of_use`` a code of http://terminology.hl7.org/CodeSystem/v3-ActReason (``TREAT``,
                   ``ETREAT``, ``HPAYMT`` …)
``patient``        the gateway's Patient.id; required for resident, and with patient/ scopes
``name``           the user's display name, for audit records
=================  ========================================================================
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import re
import secrets
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from .errors import ConfigError, GatewayError
from .keyfiles import create_once, keys_dir

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_SCOPES",
    "DEV_ISSUER",
    "ROLES",
    "Principal",
    "Role",
    "TokenError",
    "TokenVerifier",
    "bearer_token",
    "dev_keys",
    "jwk_thumbprint",
    "mint",
    "parse_scope",
    "public_jwk",
]

Role = Literal["clinician", "resident", "integrator", "regulator", "admin", "service"]
ROLES: tuple[Role, ...] = get_args(Role)

#: Issuer of the tokens `mint` signs with the dev keys.
DEV_ISSUER = "urn:huren:dev"
#: The audience (``aud``) tokens for Huren carry unless configured otherwise.
DEFAULT_AUDIENCE = "huren"

#: Scopes a minted token gets when none are asked for: the least each role's work needs.
DEFAULT_SCOPES: Mapping[Role, str] = {
    # Look up images and lab results across facilities, and record recognition decisions
    # (Basic: accept or re-test a recognised result).
    "clinician": "user/*.rs user/Basic.c",
    # Residents read their own records: patient/ binds to the token's "patient" claim.
    "resident": "patient/*.rs patient/Consent.cd",  # and they give or withdraw consent
    # Facility IT: check how the registry lists their facility and its endpoints.
    "integrator": "user/Organization.rs user/Endpoint.rs",
    # Oversight reads the audit trail and the facilities it names, not clinical data.
    "regulator": "user/AuditEvent.rs user/Organization.rs",
    # Everything the API offers (AuditEvent stays append-only whatever the scope says).
    "admin": "user/*.cruds",
    # A backend client, no user: system/ scopes only.
    "service": "system/*.rs",
}

_ROLES_NEEDING_FACILITY = frozenset({"clinician", "integrator"})
# Asymmetric algorithms only: with a symmetric one, the public key in the JWKS would be the
# HMAC secret, and anyone could sign (the classic key-confusion attack).
_ASYMMETRIC = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
_INTERACTIONS = frozenset("cruds")
# SMART App Launch 2.0 scopes, and v1's read/write/* (section 3.3, "Scopes for requesting
# clinical data"); v2's letters come in the order c, r, u, d, s.
_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]*)\.(read|write|\*|c?r?u?d?s?)")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
# What a description may show of a value from the token; anything else is not echoed back.
_SHOWABLE = re.compile(r"[A-Za-z0-9._~+/=-]{1,64}")

log = logging.getLogger(__name__)

BearerError = Literal["invalid_request", "invalid_token", "insufficient_scope"]


class TokenError(GatewayError):
    """A bearer token is refused; `error` is the RFC 6750 code, `description` says why.

    The description is one short sentence fit for ``error_description``: it never holds the
    token, and never a double quote or backslash.
    """

    def __init__(self, description: str, error: BearerError = "invalid_token") -> None:
        # Kept fit for a quoted-string header parameter whatever a caller passes.
        description = re.sub(r"[\x00-\x1f\x7f]", " ", re.sub(r'["\\]', "'", description))
        super().__init__(description)
        self.error: BearerError = error
        self.description = description

    @property
    def status(self) -> int:
        """The HTTP status RFC 6750 section 3.1 gives the error."""
        return {"invalid_request": 400, "invalid_token": 401, "insufficient_scope": 403}[self.error]

    def www_authenticate(self, realm: str = "huren") -> str:
        """The ``WWW-Authenticate`` header value of the refusal (RFC 6750 section 3)."""
        return (
            f'Bearer realm="{realm}", error="{self.error}", error_description="{self.description}"'
        )

    def __repr__(self) -> str:
        return f"TokenError({self.description!r}, error={self.error!r})"


def parse_scope(scope: str) -> tuple[str, str, str] | None:
    """A SMART resource scope as ``(context, resource type or "*", interactions)``.

    ``user/ImagingStudy.rs`` gives ``("user", "ImagingStudy", "rs")``; v1's ``.read`` is
    ``rs``, ``.write`` is ``cud`` and ``.*`` is ``cruds``. Anything else (``openid``,
    ``launch/patient``, a malformed scope) gives None. So do v2's granular scopes
    (``patient/Observation.rs?category=laboratory``): Huren does not evaluate their query,
    and granting the scope without it would grant more than it says.
    """
    m = _SCOPE.fullmatch(scope)
    if m is None or not m[3]:
        return None
    return m[1], m[2], _V1.get(m[3], m[3])


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, as a verified token says: the input of every policy decision."""

    #: The token's ``sub``: the user, or the client for role service.
    subject: str
    role: Role
    #: The registry id of the facility the user acts for (``facility`` claim).
    facility_id: str | None
    #: The granted scopes, as the token lists them; `allows` reads the SMART ones.
    scopes: frozenset[str]
    #: A v3-ActReason code (``TREAT``, ``ETREAT``, ``HPAYMT`` …), when the token states one.
    purpose_of_use: str | None = None
    #: The gateway's Patient.id of a resident, or of the patient in a launch context.
    patient: str | None = None
    name: str | None = None
    #: ``jti``: lets audit records and revocation name this token without holding it.
    token_id: str | None = None
    #: ``exp``, in seconds since the epoch.
    expires_at: float = 0.0
    # (context, resource type or "*", interaction), expanded from the scopes once.
    _grants: frozenset[tuple[str, str, str]] = field(
        init=False, repr=False, compare=False, default=frozenset()
    )
    # (resource type or "*", interaction): the same without the context, for `allows`.
    _allowed: frozenset[tuple[str, str]] = field(
        init=False, repr=False, compare=False, default=frozenset()
    )

    def __post_init__(self) -> None:
        grants = frozenset(
            (context, rtype, letter)
            for context, rtype, letters in filter(None, map(parse_scope, self.scopes))
            for letter in letters
        )
        object.__setattr__(self, "_grants", grants)
        object.__setattr__(self, "_allowed", frozenset((t, i) for _, t, i in grants))

    def allows(self, resource_type: str, interaction: str) -> bool:
        """Whether a scope grants ``interaction`` (one of c, r, u, d, s) on ``resource_type``.

        Scopes say what a client may ask for at most; which records it may see (its facility,
        its patient, the recognition rules) is decided by policy after this.

        Raises
        ------
        ValueError
            ``interaction`` is not one of c, r, u, d, s.
        """
        if interaction not in _INTERACTIONS:
            raise ValueError(f"interaction must be one of c, r, u, d, s (got {interaction!r})")
        allowed = self._allowed
        return (resource_type, interaction) in allowed or ("*", interaction) in allowed

    def contexts(self, resource_type: str, interaction: str) -> frozenset[str]:
        """The scope contexts (patient, user, system) whose scopes allow the interaction.

        ``{"patient"}`` alone means only the `patient`'s own records may be touched.
        """
        return frozenset(
            c for c, t, i in self._grants if i == interaction and t in (resource_type, "*")
        )


class TokenVerifier:
    """Checks bearer JWTs against a key set and turns them into `Principal` objects.

    Parameters
    ----------
    jwks
        The public keys: a JWKS (``{"keys": [...]}``) or the http(s) URL of one.
    issuer, audience
        What ``iss`` must equal and ``aud`` must hold.
    algorithms
        Accepted ``alg`` values; asymmetric ones only.
    leeway
        Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    cache_size
        Verified tokens remembered (least recently used go first).
    clock
        Seconds since the epoch; tests inject one.

    With a URL, keys are fetched with PyJWT's `jwt.PyJWKClient`. `verify` is synchronous, so
    when it meets a kid it does not know it fetches the set there and then, blocking, at most
    once per ``refetch_interval`` seconds (key rotation; a flood of made-up kids costs one
    fetch a minute); a failed fetch is logged and the keys held so far stay in use. Call
    ``await refresh()`` at start-up, and periodically if wanted, to fetch off the event loop
    instead. A key set that changes empties the cache, so a key withdrawn from the set stops
    verifying tokens at once.

    Raises
    ------
    ConfigError
        An algorithm is symmetric or unknown, or the JWKS is malformed, holds a private key,
        or (given as a dict) holds no key for the accepted algorithms.
    """

    refetch_interval = 60.0

    def __init__(
        self,
        jwks: Mapping[str, Any] | str,
        *,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...] = ("ES256", "RS256"),
        leeway: float = 30,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        refused = [a for a in algorithms if a not in _ASYMMETRIC]
        if refused or not algorithms:
            raise ConfigError(
                f"token algorithms must be asymmetric, e.g. ES256 or RS256 (got {refused})"
            )
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.leeway = leeway
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._by_kid: dict[str, jwt.PyJWK] = {}
        self._keys: list[jwt.PyJWK] = []
        self._raw: list[dict[str, Any]] = []  # the JWKs of _keys, to notice a changed set
        self._client: jwt.PyJWKClient | None = None
        self._fetched_at: float | None = None
        if isinstance(jwks, str):
            try:
                self._client = jwt.PyJWKClient(jwks, cache_jwk_set=False, timeout=5)
            except jwt.PyJWKClientError as exc:
                raise ConfigError(f"token key set: {exc}") from None
        else:
            self._use(jwks)
            if not self._keys:
                raise ConfigError(f"token key set holds no key for {', '.join(algorithms)}")

    @classmethod
    def from_jwks_source(
        cls, source: str, *, issuer: str, audience: str = DEFAULT_AUDIENCE, **options: Any
    ) -> TokenVerifier:
        """A verifier for a JWKS file path or http(s) URL; other options as the constructor."""
        if source.startswith(("http://", "https://")):
            return cls(source, issuer=issuer, audience=audience, **options)
        path = Path(source)
        try:
            jwks = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"token key set {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"token key set {path} is not valid JSON: {exc}") from None
        if not isinstance(jwks, dict):
            raise ConfigError(f"token key set {path}: expected a JSON object with 'keys'")
        return cls(jwks, issuer=issuer, audience=audience, **options)

    @classmethod
    def for_settings(
        cls, data_dir: Path, jwks: str | None, issuer: str | None, audience: str
    ) -> TokenVerifier:
        """The verifier Settings ask for: ``auth_jwks``, else the data dir's dev keys.

        Raises
        ------
        ConfigError
            ``auth_jwks`` is set without ``auth_issuer``: a real identity provider's tokens
            must be bound to its issuer.
        """
        if jwks is None:
            return cls(dev_keys(data_dir)[1], issuer=issuer or DEV_ISSUER, audience=audience)
        if not issuer:
            raise ConfigError("auth_issuer is required when auth_jwks is set")
        return cls.from_jwks_source(jwks, issuer=issuer, audience=audience)

    def verify(self, token: str) -> Principal:
        """The `Principal` a valid token stands for.

        Raises
        ------
        TokenError
            The token is malformed, signed with an unaccepted algorithm or an unknown or wrong
            key, expired or not yet valid, for another audience or issuer, or its claims do
            not make a principal; the description says which.
        """
        now = self._clock()
        principal = self._cache.get(token)
        if principal is not None:
            if now <= principal.expires_at + self.leeway:
                try:
                    self._cache.move_to_end(token)
                except KeyError:  # evicted by another thread meanwhile: still valid
                    pass
                return principal
            self._cache.pop(token, None)
            raise TokenError("the token has expired")
        principal = self._verify(token, now)
        self._cache[token] = principal
        while len(self._cache) > self._cache_size:
            try:
                self._cache.popitem(last=False)
            except KeyError:
                break
        return principal

    def load_keys(self) -> None:
        """Fetch the key set from the URL now, blocking (a dict key set is left as it is).

        Raises
        ------
        ConfigError
            The URL cannot be fetched or does not hold a JWKS.
        """
        if self._client is None:
            return
        self._fetched_at = time.monotonic()
        try:
            data = self._client.fetch_data()
        except jwt.PyJWTError as exc:
            raise ConfigError(f"token key set {self._client.uri}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"token key set {self._client.uri}: expected a JSON object")
        self._use(data)

    async def refresh(self) -> None:
        """`load_keys` in a thread, off the event loop."""
        await asyncio.to_thread(self.load_keys)

    def _use(self, jwks: Mapping[str, Any]) -> None:
        by_kid: dict[str, jwt.PyJWK] = {}
        usable: list[jwt.PyJWK] = []
        raw: list[dict[str, Any]] = []
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise ConfigError("token key set: expected a JSON object with a 'keys' list")
        for n, jwk in enumerate(keys):
            if not isinstance(jwk, dict):
                raise ConfigError(f"token key set: key {n} is not a JSON object")
            kid = jwk.get("kid")
            name = kid if isinstance(kid, str) else str(n)
            if "d" in jwk:
                raise ConfigError(f"token key set: key {name} holds a private key")
            # Only signing keys of the accepted kinds; an "oct" (HMAC) key is never used.
            if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("EC", "RSA", "OKP"):
                continue
            try:
                key = jwt.PyJWK(jwk)
            except jwt.PyJWTError as exc:
                # One odd key (another curve, a new kty) must not disable the others.
                log.warning("token key set: key %s skipped (%s)", name, type(exc).__name__)
                continue
            if key.algorithm_name not in self.algorithms:
                continue
            usable.append(key)
            raw.append(jwk)
            if isinstance(kid, str):
                by_kid[kid] = key
        if raw != self._raw:
            self._cache.clear()
        self._by_kid, self._keys, self._raw = by_kid, usable, raw

    def _key_for(self, header: Mapping[str, Any], alg: str) -> jwt.PyJWK:
        kid = header.get("kid")
        if kid is None:
            matching = [k for k in self._keys if k.algorithm_name == alg]
            if len(matching) == 1:
                return matching[0]
            if not matching and self._may_fetch():
                self._fetch_while_verifying()
                return self._key_for(header, alg)
            raise TokenError(
                f"the token names no key (kid) and {len(matching)} keys could have signed it"
            )
        if not isinstance(kid, str):
            raise TokenError("malformed token: the header's kid is not a string")
        key = self._by_kid.get(kid)
        if key is None and self._may_fetch():
            self._fetch_while_verifying()
            key = self._by_kid.get(kid)
        if key is None:
            return self._no_key(kid)
        if key.algorithm_name != alg:
            raise TokenError(
                f"the token's algorithm {alg} does not match its key's {key.algorithm_name}"
            )
        return key

    def _no_key(self, kid: str | None) -> jwt.PyJWK:
        raise TokenError(f"no key{_shown(kid, ' ')} of the token's issuer is known")

    def _fetch_while_verifying(self) -> None:
        try:
            self.load_keys()
        except ConfigError as exc:
            # The client is not at fault: keep the keys held so far and say so to operators.
            log.warning("token key set not refreshed: %s", exc.detail)

    def _may_fetch(self) -> bool:
        return self._client is not None and (
            self._fetched_at is None or time.monotonic() - self._fetched_at > self.refetch_interval
        )

    def _verify(self, token: str, now: float) -> Principal:
        if not isinstance(token, str) or token.count(".") != 2:
            raise TokenError("malformed token: expected a JWT (three dot-separated parts)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token: the header does not decode") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            accepted = ", ".join(self.algorithms)
            raise TokenError(f"unsupported algorithm{_shown(alg, ' ')}: accepted are {accepted}")
        key = self._key_for(header, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                # Time is checked below against self._clock, one clock for cache and token.
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature: the token was not signed by its key") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"missing claim {exc.claim!r}") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"wrong audience: the token is not for {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"wrong issuer: expected {self.issuer!r}") from None
        except InvalidSubjectError:
            raise TokenError("malformed claim 'sub': expected a string") from None
        except InvalidJTIError:
            raise TokenError("malformed claim 'jti': expected a string") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError(f"unsupported algorithm {alg!r} for this key") from None
        except jwt.DecodeError:
            raise TokenError("malformed token: a part does not decode") from None
        except jwt.PyJWTError:
            raise TokenError("invalid token") from None
        exp = _time_claim(claims, "exp")
        assert exp is not None  # required above
        if now > exp + self.leeway:
            raise TokenError("the token has expired")
        nbf = _time_claim(claims, "nbf")
        iat = _time_claim(claims, "iat")
        if (nbf is not None and nbf > now + self.leeway) or (
            iat is not None and iat > now + self.leeway
        ):
            raise TokenError("the token is not valid yet (nbf or iat in the future)")
        return _principal(claims, exp)


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError(f"malformed claim {name!r}: expected seconds since the epoch")
    return float(value)


def _principal(claims: Mapping[str, Any], exp: float) -> Principal:
    subject = claims["sub"]
    if not subject:
        raise TokenError("malformed claim 'sub': empty")
    role = claims.get("role")
    if role is None:
        raise TokenError("missing claim 'role'")
    if role not in ROLES:
        raise TokenError(f"unknown role{_shown(role, ' ')}: expected one of {', '.join(ROLES)}")
    facility, purpose, patient, name, jti = (
        _str_claim(claims, c) for c in ("facility", "purpose_of_use", "patient", "name", "jti")
    )
    raw = claims.get("scope", "")
    if isinstance(raw, str):
        scopes = frozenset(raw.split())
    elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        scopes = frozenset(raw)
    else:
        raise TokenError("malformed claim 'scope': expected space-separated scopes")
    problem = _claims_problem(role, facility, patient, scopes)
    if problem:
        raise TokenError(problem)
    return Principal(
        subject=subject,
        role=role,
        facility_id=facility,
        scopes=scopes,
        purpose_of_use=purpose,
        patient=patient,
        name=name,
        token_id=jti,
        expires_at=exp,
    )


def _shown(value: object, prefix: str = "") -> str:
    """A value from the token, quoted, if it is short and harmless to echo; else nothing."""
    return f"{prefix}'{value}'" if isinstance(value, str) and _SHOWABLE.fullmatch(value) else ""


def _str_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TokenError(f"malformed claim {name!r}: expected a non-empty string")
    return value


def _claims_problem(
    role: str, facility: str | None, patient: str | None, scopes: Iterable[str]
) -> str | None:
    """What makes these claims no principal, shared by `verify` and `mint`; None if fine."""
    if role in _ROLES_NEEDING_FACILITY and not facility:
        return f"missing claim 'facility': required for role {role}"
    if role == "resident" and not patient:
        return "missing claim 'patient': required for role resident"
    contexts = {parsed[0] for parsed in map(parse_scope, scopes) if parsed}
    if role == "service" and contexts - {"system"}:
        return "role service holds system/ scopes only (no user, no patient)"
    if role != "service" and "system" in contexts:
        return f"system/ scopes are for role service, not {role}"
    if "patient" in contexts and not patient:
        return "patient/ scopes need the 'patient' claim"
    return None


# --- keys ----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# RFC 7638 section 3.2: the required members only, in lexicographic order.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url: a stable key id."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError(f"jwk_thumbprint: unsupported kty {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def public_jwk(
    key: ec.EllipticCurvePublicKey
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPublicKey
    | rsa.RSAPrivateKey,
) -> dict[str, Any]:
    """The public JWK of an EC P-256 or RSA key, with ``kid`` (its thumbprint), alg and use."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        key = key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"public_jwk: EC keys must be P-256 (got {key.curve.name})")
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
        alg = "ES256"
    else:
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
        alg = "RS256"
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}


def dev_keys(data_dir: Path) -> tuple[bytes, dict[str, Any]]:
    """The dev ES256 key pair: its private key (PEM) and the JWKS of its public key.

    Made on first use in ``data_dir/keys/`` (``dev-es256.pem``, mode 0600, in a 0700
    directory; ``jwks.json`` beside it, for anything that verifies Huren's dev tokens), then
    read back. Processes racing to make it end up with the same key.

    Raises
    ------
    ConfigError
        The key file exists but is not an EC P-256 private key.
    """
    folder = keys_dir(data_dir)
    pem_path = folder / "dev-es256.pem"
    try:
        pem = pem_path.read_bytes()
    except FileNotFoundError:
        pem = _create_dev_key(pem_path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise ConfigError(f"{pem_path}: not a PEM private key without password") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{pem_path}: expected an EC P-256 private key")
    jwks = {"keys": [public_jwk(key)]}
    text = json.dumps(jwks, indent=2) + "\n"
    jwks_path = folder / "jwks.json"
    try:
        current = jwks_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current != text:
        _write_atomically(jwks_path, text.encode("utf-8"), mode=0o644)
    return pem, jwks


def _create_dev_key(path: Path) -> bytes:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return create_once(path, pem)


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def mint(
    private_pem: bytes,
    kid: str,
    *,
    subject: str,
    role: Role,
    facility: str | None = None,
    scopes: str | Iterable[str] | None = None,
    purpose_of_use: str | None = None,
    patient: str | None = None,
    name: str | None = None,
    lifetime: float = 8 * 3600,
    issuer: str = DEV_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
) -> str:
    """An ES256-signed access token, as an identity provider would issue it.

    Parameters
    ----------
    private_pem, kid
        The EC P-256 signing key (PEM) and the key id its JWKS gives it.
    scopes
        Space-separated or listed; None gives the role's `DEFAULT_SCOPES`.
    lifetime
        Seconds from now to ``exp``.

    Raises
    ------
    ValueError
        The claims would be refused by `TokenVerifier.verify` (a clinician without facility,
        a resident without patient, an unknown role …), or the lifetime is not positive.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    if not subject:
        raise ValueError("a token needs a subject")
    if not lifetime > 0:
        raise ValueError(f"lifetime must be positive seconds (got {lifetime!r})")
    if scopes is None:
        scopes = DEFAULT_SCOPES[role]
    scope_list = scopes.split() if isinstance(scopes, str) else list(scopes)
    problem = _claims_problem(role, facility, patient, scope_list)
    if problem:
        raise ValueError(problem)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + int(lifetime),
        "jti": secrets.token_urlsafe(16),
        "role": role,
        "scope": " ".join(scope_list),
    }
    optional = {
        "facility": facility,
        "purpose_of_use": purpose_of_use,
        "patient": patient,
        "name": name,
    }
    claims.update({k: v for k, v in optional.items() if v is not None})
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("mint signs with ES256: expected an EC P-256 private key")
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value (RFC 6750 section 2.1).

    Raises
    ------
    TokenError
        ``invalid_request``: another scheme, or not exactly one token.
    """
    scheme, _, rest = authorization.strip().partition(" ")
    token = rest.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise TokenError("expected 'Authorization: Bearer <token>'", error="invalid_request")
    return token
