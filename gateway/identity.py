"""Patient identity across facilities: the national ID number and each facility's MRN.

A person is keyed by their national ID number. Each facility knows them by its own MRN
(``facility.mrn_system``, DICOM IssuerOfPatientID ``facility.mrn_issuer``); the gateway keeps
the cross-reference in the durable store and uses it to ask each facility in its own terms.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .registry import Registry
from .storage import Demographics, Store

#: FHIR identifier system of the resident ID number (GB 11643), as the city's systems use it.
NATIONAL_ID_SYSTEM = "urn:oid:2.16.156.10011.1.5"
#: DICOM IssuerOfPatientID for the resident ID number in OtherPatientIDsSequence.
NATIONAL_ID_ISSUER = "CN-RID"

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


@lru_cache(maxsize=65536)
def is_national_id(value: str) -> bool:
    """An 18-character resident ID number with a valid ISO 7064 MOD 11-2 check character."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], _WEIGHTS, strict=True))
    return _CHECK[total % 11] == value[17].upper()


async def resolve_person(
    store: Store, registry: Registry, patient_id: str, issuer: str | None
) -> str | None:
    """The person a (PatientID, IssuerOfPatientID) pair names, if the gateway knows them."""
    if issuer in (None, "", NATIONAL_ID_ISSUER) and is_national_id(patient_id):
        return patient_id
    if issuer:
        facility = registry.by_issuer(issuer)
        if facility is None:
            return None
        return await store.person_for(facility.mrn_system, patient_id)
    return None


async def mrns_by_facility(store: Store, registry: Registry, person_key: str) -> dict[str, str]:
    """facility id -> the person's MRN there, for every facility that knows them."""
    out: dict[str, str] = {}
    for ident in await store.identifiers_for(person_key):
        facility = registry.by_mrn_system(ident.system)
        if facility is not None:
            out[facility.id] = ident.value
    return out


async def import_seed_identities(store: Store, registry: Registry, seed_dir: Path) -> int:
    """Learn the cross-references of the seed's residents (the city's registration feed)."""
    path = seed_dir / "patients.json"
    patients = json.loads(path.read_text(encoding="utf-8"))
    await store.put_people(_seed_demographics(p) for p in patients)
    n = 0
    for p in patients:
        person = p["national_id"]
        await store.link_identity(person, NATIONAL_ID_SYSTEM, person, source="seed")
        for fid, mrn in p["records"].items():
            facility = registry.get(fid)
            if facility is not None:
                await store.link_identity(
                    person, facility.mrn_system, mrn, facility_id=fid, source="seed"
                )
                n += 1
    return n


def _seed_demographics(p: dict[str, Any]) -> Demographics:
    family, _, given = p["name_pinyin"].partition("^")
    names: list[dict[str, Any]] = [{"use": "official", "text": p["name"]}]
    if p["name_dicom"].count("=") and "^" in p["name_dicom"].split("=", 1)[1]:
        zh_family, _, zh_given = p["name_dicom"].split("=", 1)[1].partition("^")
        names[0] |= {"family": zh_family, "given": [zh_given]}
    # The pinyin form, as DICOM's alphabetic PN group and HL7 send it.
    names.append({"use": "usual", "text": f"{family} {given}", "family": family, "given": [given]})
    gender = {"M": "male", "F": "female"}.get(p["sex"], "unknown")
    return Demographics(p["national_id"], tuple(names), gender, p["birth_date"], "seed")
