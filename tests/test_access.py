"""Who may see what, through the real HTTP faces: tokens refused in every way a token can be
wrong, each role seeing what it may and nothing more, break-the-glass allowed and flagged, the
audit trail read and searched but never changed, rate limits, and the look-up statistics."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from gateway.identity import NATIONAL_ID_SYSTEM
from gateway.registry import load_registry
from gateway.storage import patient_id_of
from gateway.tokens import DEV_ISSUER, dev_keys
from tests.city import City, Client, bearer, open_gateway

REGISTRY = load_registry()
IMAGING = {f.id for f in REGISTRY if f.imaging.kind != "none"}


@pytest.fixture
async def client(city: City) -> AsyncIterator[Client]:
    async with open_gateway(city) as (client, _):
        yield client


def resident_with_studies_elsewhere(city: City) -> tuple[dict[str, Any], str, str]:
    """A resident registered at two facilities: (resident, a facility of theirs, another
    facility of theirs that holds studies of them)."""
    studies = city.studies()
    for p in city.patients():
        records = sorted(p["records"])
        holders = {s["facility_id"] for s in studies if s["national_id"] == p["national_id"]}
        for holder in sorted(holders):
            others = [f for f in records if f != holder]
            if holder in records and others:
                return p, others[0], holder
    raise AssertionError("no resident with studies at one of two facilities")


def stranger_facility(person: dict[str, Any]) -> str:
    """A facility where the resident has no record."""
    return next(f.id for f in REGISTRY if f.id not in person["records"])


async def get(
    client: Client,
    path: str,
    headers: dict[str, str],
    **params: str,
) -> tuple[int, Any]:
    resp = await client.get(path, params=params, headers=headers)
    body = await resp.json(content_type=None)
    return resp.status, body


# -- authentication --------------------------------------------------------------------------


def _forge(claims: dict[str, Any], key: Any, alg: str = "ES256", kid: str | None = None) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """HS256 signed with the server's public key as the secret: the key-confusion attack
    (built by hand: PyJWT itself refuses to sign so)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


async def test_bad_tokens_are_refused_with_a_challenge(
    client: Client,
    city: City,
) -> None:
    """Missing, forged, expired, wrong-audience and wrong-algorithm tokens: 401, with
    WWW-Authenticate naming the problem, in the face's own form; and audited."""
    pem, jwks = dev_keys(city.data_dir)
    kid = jwks["keys"][0]["kid"]
    now = int(time.time())
    good = {
        "sub": "dr-x",
        "role": "clinician",
        "facility": "F001",
        "scope": "user/*.rs",
        "iss": DEV_ISSUER,
        "aud": "huren",
        "iat": now,
        "exp": now + 600,
    }
    real_key = load_pem_private_key(pem, None)
    other_key = ec.generate_private_key(ec.SECP256R1())
    public_pem = real_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    cases = {
        "forged": _forge(good, other_key, kid=kid),
        "expired": _forge({**good, "exp": now - 3600, "iat": now - 7200}, real_key, kid=kid),
        "wrong audience": _forge({**good, "aud": "someone-else"}, real_key, kid=kid),
        "wrong algorithm": _hs256(good, public_pem, kid),
        "garbage": "not.a.token",
    }
    for what, token in cases.items():
        for path in ("/fhir/Observation", "/dicomweb/studies"):
            resp = await client.get(
                path,
                params={"patient": "p-1"} if path.startswith("/fhir") else {},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert resp.status == 401, (what, path)
            challenge = resp.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="huren"') and "invalid_token" in challenge
            body = await resp.json(content_type=None)
            if path.startswith("/fhir"):
                assert body["resourceType"] == "OperationOutcome", what
            else:
                assert "00000902" in body[0], what
    resp = await client.get("/fhir/Patient", params={"name": "x"}, headers={"Authorization": ""})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="huren"'
    # Public: discovery and the capability statement.
    smart = await client.get("/.well-known/smart-configuration", headers={"Authorization": ""})
    assert smart.status == 200 and "permission-v2" in (await smart.json())["capabilities"]
    assert (await client.get("/fhir/metadata", headers={"Authorization": ""})).status == 200


# -- roles -----------------------------------------------------------------------------------


async def test_a_clinician_reads_another_facilitys_records_only_with_a_reason(
    client: Client,
    city: City,
) -> None:
    """Under their facility's care: allowed. Not: 403 in each face's form, unless the glass
    is broken with a reason, which is allowed and flagged in the audit and the report."""
    person, mine, holder = resident_with_studies_elsewhere(city)
    nid = str(person["national_id"])
    pid = patient_id_of(nid)
    cared = bearer(city.data_dir, "clinician", facility=mine)
    status, studies = await get(client, "/dicomweb/studies", cared, PatientID=nid)
    assert status == 200 and holder in {s["00111001"]["Value"][0] for s in studies}
    status, _ = await get(client, "/fhir/Observation", cared, patient=pid)
    assert status == 200

    stranger = stranger_facility(person)
    other = bearer(city.data_dir, "clinician", facility=stranger, subject="dr-stranger")
    for path, params in (
        ("/dicomweb/studies", {"PatientID": nid}),
        ("/fhir/Observation", {"patient": pid}),
        ("/fhir/Patient/" + pid, {}),
        ("/fhir/ImagingStudy", {"patient.identifier": f"{NATIONAL_ID_SYSTEM}|{nid}"}),
    ):
        status, body = await get(client, path, other, **params)
        assert status == 403, path
        text = str(body)
        # The reason (DICOM's ErrorComment holds 64 characters, its Warning header the rest).
        assert "no care relationship" in text and nid not in text
    # The study itself, by its UID, at the holder: also refused.
    study = next(
        s["study_instance_uid"]
        for s in city.studies()
        if s["national_id"] == nid and s["facility_id"] == holder
    )
    status, _ = await get(client, f"/facilities/{holder}/dicomweb/studies/{study}/series", other)
    assert status == 403
    # A name search does not list the resident to the stranger.
    status, found = await get(client, "/fhir/Patient", other, name=str(person["name"]))
    assert status == 200 and pid not in {e["resource"]["id"] for e in found["entry"]}

    glass = {**other, "Huren-Break-Glass": "unconscious patient in the emergency room"}
    status, studies = await get(client, "/dicomweb/studies", glass, PatientID=nid)
    assert status == 200 and studies
    admin = bearer(city.data_dir, "admin")
    status, events = await get(client, "/fhir/AuditEvent", admin, agent="dr-stranger")
    assert status == 200
    latest = AuditEvent.model_validate(events["entry"][0]["resource"])
    assert latest.outcome == "0"
    assert any(c.code == "BTG" for p in latest.purposeOfEvent or [] for c in p.coding or [])
    assert "emergency room" in str(events["entry"][0]["resource"])
    refused = [
        e["resource"] for e in events["entry"] if e["resource"]["outcome"] == "4"
    ]  # the denials were audited too
    assert len(refused) >= 5
    regulator = bearer(city.data_dir, "regulator")
    today = date.today()
    status, report = await get(
        client,
        "/admin/stats/break-glass",
        regulator,
        **{"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))},
    )
    assert status == 200 and any(r["facility"] == stranger for r in report["rows"])
    # An empty reason is no reason.
    status, _ = await get(
        client, "/dicomweb/studies", {**other, "Huren-Break-Glass": " "}, PatientID=nid
    )
    assert status == 403


async def test_a_resident_sees_only_their_own_records(
    client: Client,
    city: City,
) -> None:
    person, _, holder = resident_with_studies_elsewhere(city)
    nid = str(person["national_id"])
    pid = patient_id_of(nid)
    me = bearer(city.data_dir, "resident", patient=pid)
    status, studies = await get(client, "/dicomweb/studies", me, PatientID=nid)
    assert status == 200 and holder in {s["00111001"]["Value"][0] for s in studies}
    status, patient = await get(client, f"/fhir/Patient/{pid}", me)
    assert status == 200 and patient["id"] == pid
    someone_else = next(p for p in city.patients() if p["national_id"] != nid)
    other_nid = str(someone_else["national_id"])
    status, _ = await get(client, "/dicomweb/studies", me, PatientID=other_nid)
    assert status == 403
    status, _ = await get(client, "/fhir/Observation", me, patient=patient_id_of(other_nid))
    assert status == 403
    # A city-wide search without a patient shows only the resident's own studies.
    status, studies = await get(client, "/dicomweb/studies", me)
    assert status == 200
    for s in studies:
        assert s["00100020"]["Value"][0] in (
            nid,
            *[str(v) for v in person["records"].values()],
        )
    # The resident reads who looked at their records, without staff names.
    status, trail = await get(client, "/fhir/AuditEvent", me)
    assert status == 200 and trail["entry"]
    Bundle.model_validate(trail)
    for e in trail["entry"]:
        assert e["resource"]["entity"][0]["what"]["reference"] == f"Patient/{pid}"
        assert e["resource"]["agent"][0]["who"] == {"display": "staff"}
    status, _ = await get(client, "/fhir/AuditEvent", me, patient=patient_id_of(other_nid))
    assert status == 403


@pytest.mark.parametrize("role", ["integrator", "regulator", "admin"])
async def test_roles_without_patient_data_are_refused_it(
    client: Client,
    city: City,
    role: str,
) -> None:
    person = city.patients()[0]
    nid = str(person["national_id"])
    token = (
        bearer(city.data_dir, role, facility="F001")
        if role == "integrator"
        else bearer(city.data_dir, role)
    )
    for path, params in (
        ("/dicomweb/studies", {"PatientID": nid}),
        ("/fhir/Observation", {"patient": patient_id_of(nid)}),
        (f"/fhir/Patient/{patient_id_of(nid)}", {}),
    ):
        status, _ = await get(client, path, token, **params)
        assert status == 403, (role, path)
    today = date.today()
    span = {"from": str(today - timedelta(days=30)), "to": str(today)}
    status, _ = await get(client, "/admin/stats/lookups", token, **span)
    assert status == (200 if role in ("regulator", "admin") else 403)
    status, _ = await get(client, "/fhir/AuditEvent", token)
    assert status == (200 if role == "admin" else 403)


async def test_scopes_bound_what_a_token_reads(
    client: Client,
    city: City,
) -> None:
    person, mine, _ = resident_with_studies_elsewhere(city)
    nid = str(person["national_id"])
    labs_only = bearer(city.data_dir, "clinician", facility=mine, scopes="user/Observation.rs")
    status, _ = await get(client, "/fhir/Observation", labs_only, patient=patient_id_of(nid))
    assert status == 200
    status, body = await get(client, "/dicomweb/studies", labs_only, PatientID=nid)
    assert status == 403 and "scope" in str(body)


# -- the audit trail -------------------------------------------------------------------------


async def test_the_audit_trail_cannot_be_changed(
    client: Client,
    city: City,
) -> None:
    admin = bearer(city.data_dir, "admin")
    status, events = await get(client, "/fhir/AuditEvent", admin, _count="1")
    assert status == 200
    Bundle.model_validate(events)
    event_id = events["entry"][0]["resource"]["id"]
    status, one = await get(client, f"/fhir/AuditEvent/{event_id}", admin)
    assert status == 200 and one["id"] == event_id
    for method, path in (
        ("POST", "/fhir/AuditEvent"),
        ("PUT", f"/fhir/AuditEvent/{event_id}"),
        ("DELETE", f"/fhir/AuditEvent/{event_id}"),
    ):
        resp = await client.request(method, path, json=one, headers=admin)
        assert resp.status == 405
        assert (await resp.json(content_type=None))["resourceType"] == "OperationOutcome"
    status, again = await get(client, f"/fhir/AuditEvent/{event_id}", admin)
    assert again == one
    # Paging through the trail: stable cursor links.
    status, page = await get(client, "/fhir/AuditEvent", admin, _count="2")
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    status, page2 = await get(
        client, "/fhir/AuditEvent" + nxt.split("/fhir/AuditEvent", 1)[1], admin
    )
    assert status == 200
    first_ids = [e["resource"]["id"] for e in page["entry"]]
    second_ids = [e["resource"]["id"] for e in page2["entry"]]
    assert not set(first_ids) & set(second_ids) and max(second_ids) < min(first_ids)


async def test_audit_search_by_patient_agent_entity_date_facility(
    client: Client,
    city: City,
) -> None:
    person, mine, holder = resident_with_studies_elsewhere(city)
    nid = str(person["national_id"])
    pid = patient_id_of(nid)
    doctor = bearer(city.data_dir, "clinician", facility=mine, subject="dr-audit")
    status, _ = await get(client, "/dicomweb/studies", doctor, PatientID=nid)
    assert status == 200
    admin = bearer(city.data_dir, "admin")
    today = date.today().isoformat()
    for params in (
        {"patient": f"Patient/{pid}"},
        {"agent": "dr-audit"},
        {"entity": f"Organization/{holder}"},
        {"facility": mine},
        {"date": today},
        {"date": f"ge{today}", "agent": "dr-audit", "entity": f"Patient/{pid}"},
    ):
        status, found = await get(client, "/fhir/AuditEvent", admin, **params)
        assert status == 200, params
        events = [
            e["resource"]
            for e in found["entry"]
            if e["resource"]["agent"][0]["who"].get("identifier", {}).get("value") == "dr-audit"
        ]
        assert events, params
        event = events[0]
        AuditEvent.model_validate(event)
        assert {"reference": f"Patient/{pid}"} in [e["what"] for e in event["entity"]]
        assert {"reference": f"Organization/{holder}"} in [e["what"] for e in event["entity"]]
        assert {"reference": f"Organization/{mine}"} in [a["who"] for a in event["agent"]]
    status, none = await get(client, "/fhir/AuditEvent", admin, date="lt2000")
    assert status == 200 and not none["entry"]
    status, _ = await get(client, "/fhir/AuditEvent", admin, colour="red")
    assert status == 400


# -- limits and statistics -------------------------------------------------------------------


async def test_rate_limits_answer_429_with_retry_after(city: City) -> None:
    async with open_gateway(city, rate_limit_user=5) as (client, _):
        statuses = []
        for _ in range(8):
            resp = await client.get("/fhir/Organization/F001")
            statuses.append(resp.status)
            if resp.status == 429:
                assert 1 <= int(resp.headers["Retry-After"]) <= 60
                body = await resp.json(content_type=None)
                assert body["issue"][0]["code"] == "throttled"
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 3


async def test_lookup_statistics_match_the_audit(
    client: Client,
    city: City,
) -> None:
    """Each cross-institution look-up counts once per holder, in the counters and in the
    audit recount alike; a look-up at the doctor's own facility is not cross-institution."""
    person, mine, holder = resident_with_studies_elsewhere(city)
    nid = str(person["national_id"])
    regulator = bearer(city.data_dir, "regulator")
    today = date.today()
    span = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}

    async def pairs(source: str) -> dict[tuple[str, str], int]:
        status, body = await get(
            client, "/admin/stats/lookups", regulator, group_by="pair", source=source, **span
        )
        assert status == 200
        return {(r["requester"], r["holder"]): r["count"] for r in body["rows"]}

    before = await pairs("counters")
    doctor = bearer(city.data_dir, "clinician", facility=mine)
    for _ in range(3):
        status, _ = await get(
            client, f"/facilities/{holder}/dicomweb/studies", doctor, PatientID=nid
        )
        assert status == 200
    status, _ = await get(client, f"/facilities/{mine}/dicomweb/studies", doctor, PatientID=nid)
    after = await pairs("counters")
    assert after.get((mine, holder), 0) - before.get((mine, holder), 0) == 3
    assert after.get((mine, mine)) is None
    assert after == await pairs("audit")
    for bad in (
        {"group_by": "colour"},
        {"from": "yesterday"},
        {"from": "2026-02-01", "to": "2026-01-01"},
    ):
        status, _ = await get(client, "/admin/stats/lookups", regulator, **bad)
        assert status == 400


async def test_consent_and_referral_open_a_facility_to_a_patients_records(
    client: Client,
    city: City,
) -> None:
    """A stranger facility is refused; once the patient consents to it (or is referred to
    it) its clinicians read the records; a revoked consent closes them again."""
    from gateway.consent import grant, revoke
    from gateway.web import CORE

    core = client.app[CORE]
    person, _, _ = resident_with_studies_elsewhere(city)
    nid = str(person["national_id"])
    strangers = [f.id for f in REGISTRY if f.id not in person["records"]][:2]
    for stranger, kind in zip(strangers, ("consent", "referral"), strict=True):
        doctor = bearer(city.data_dir, "clinician", facility=stranger, subject=f"dr-{kind}")
        status, _ = await get(client, "/dicomweb/studies", doctor, PatientID=nid)
        assert status == 403
        grant_id = await grant(core.store, nid, stranger, kind, granted_by="test")  # type: ignore[arg-type]
        core.policy.forget(nid)
        status, studies = await get(client, "/dicomweb/studies", doctor, PatientID=nid)
        assert status == 200 and studies
        assert await revoke(core.store, grant_id, nid)
        core.policy.forget(nid)
        status, _ = await get(client, "/dicomweb/studies", doctor, PatientID=nid)
        assert status == 403


async def test_a_resident_records_and_withdraws_consent_through_fhir(
    client: Client,
    city: City,
) -> None:
    """POST /fhir/Consent by the resident opens their records to one facility; the Consent
    reads back as valid R4; DELETE withdraws it; nobody else records one for them."""
    from fhir.resources.R4B.consent import Consent

    person, _, _ = resident_with_studies_elsewhere(city)
    nid = str(person["national_id"])
    pid = patient_id_of(nid)
    stranger = [f.id for f in REGISTRY if f.id not in person["records"]][2]
    doctor = bearer(city.data_dir, "clinician", facility=stranger, subject="dr-consented")
    me = bearer(city.data_dir, "resident", patient=pid)
    body = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {"coding": [{"code": "PRCP"}]},
                    "reference": {"reference": f"Organization/{stranger}"},
                }
            ],
        },
    }
    assert (await get(client, "/dicomweb/studies", doctor, PatientID=nid))[0] == 403
    other = next(p for p in city.patients() if p["national_id"] != nid)
    someone = bearer(city.data_dir, "resident", patient=patient_id_of(str(other["national_id"])))
    assert (await client.post("/fhir/Consent", json=body, headers=someone)).status == 403
    assert (await client.post("/fhir/Consent", json=body, headers=doctor)).status == 403
    bad = await client.post("/fhir/Consent", json={**body, "status": "nonsense"}, headers=me)
    assert bad.status == 400
    made = await client.post("/fhir/Consent", json=body, headers=me)
    assert made.status == 201, await made.text()
    consent = await made.json()
    Consent.model_validate(consent)
    assert made.headers["Location"].endswith(f"/Consent/{consent['id']}")
    assert (await get(client, "/dicomweb/studies", doctor, PatientID=nid))[0] == 200
    status, listed = await get(client, "/fhir/Consent", me, patient=f"Patient/{pid}")
    assert status == 200 and consent["id"] in {e["resource"]["id"] for e in listed["entry"]}
    gone = await client.delete(f"/fhir/Consent/{consent['id']}", headers=me)
    assert gone.status == 204
    assert (await get(client, "/dicomweb/studies", doctor, PatientID=nid))[0] == 403
    assert (await get(client, f"/fhir/Consent/{consent['id']}", me))[0] == 404
