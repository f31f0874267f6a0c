"""Who may see what: the one place the gateway decides (DESIGN.md: policy lives once, in
gateway/, and both faces go through it).

- A clinician reads their own facility's records, and another facility's records of a patient
  under their facility's care (the patient is registered there: an encounter; or a referral),
  or who consented, or under break-the-glass with a stated reason (allowed, and flagged).
- A resident reads only their own records.
- Integrators, regulators and admins never read a patient's records: they have the
  configuration and the statistics.
- A backend service (SMART ``system/`` scopes, no user) reads what its scopes name.
- Every token's SMART scopes bound it further: ``user/Observation.rs`` reads no ImagingStudy.

Each request carries an `Access`: the faces fill in whose data it touched and which
facilities hold it, the policy fills in what it allowed and why; the audit record is made
from it when the answer goes out (gateway/guard.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Final

from .audit import AuditRecord
from .consent import ANY_FACILITY, active_grants
from .errors import Forbidden
from .shares import Share, covers
from .storage import Store
from .tokens import Principal

#: Seconds a care relationship or consent is remembered (revocation takes this long at most).
RELATION_TTL: Final = 30.0
_RELATIONS_MAX: Final = 100_000
#: The roles that never read a patient's records.
NO_PATIENT_DATA: Final = frozenset({"integrator", "regulator", "admin"})


@dataclass(slots=True)
class Access:
    """One request: who asked, and what it touched. Becomes its audit record."""

    path: str
    action: str  # AuditEvent.action: C R U D E
    subtype: str  # restful-interaction code
    query: str | None = None
    source: str | None = None
    request_id: str | None = None
    principal: Principal | None = None
    resource_type: str | None = None
    break_glass: str | None = None  # the reason stated, when the glass was broken
    broke_glass: bool = False  # the policy relied on it
    patient: str | None = None
    holders: set[str] = field(default_factory=set)
    detail: str | None = None
    audited: bool = False
    #: A resident's cloud-film share the request came through (its link is the credential),
    #: and whether its second factor was answered in this browser session.
    share: Share | None = None
    share_unlocked: bool = False

    def record(self, status: int) -> AuditRecord:
        p = self.principal
        outcome = "0" if status < 400 else ("4" if status < 500 else "8")
        return AuditRecord(
            action=self.action,
            subtype=self.subtype,
            outcome=outcome,
            status=status,
            path=self.path,
            user=p.subject if p else None,
            role=p.role if p else None,
            facility=p.facility_id if p else None,
            purpose=p.purpose_of_use if p else None,
            break_glass=self.broke_glass,
            reason=self.break_glass if self.broke_glass else None,
            patient=self.patient,
            holders=tuple(sorted(self.holders)),
            resource_type=self.resource_type,
            query=self.query,
            source=self.source,
            request_id=self.request_id,
            detail=self.detail,
        )


class Policy:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._relations: dict[tuple[str, str], tuple[bool, float]] = {}
        self._residents: dict[str, str | None] = {}

    # -- what a token may do at all -------------------------------------------------------

    @staticmethod
    def require_scope(access: Access, resource_type: str, interaction: str) -> Principal:
        """The principal, if its scopes allow ``interaction`` (c r u d s) on the type."""
        p = _principal(access)
        access.resource_type = resource_type
        if not p.allows(resource_type, interaction):
            raise Forbidden(f"the token's scopes do not allow {resource_type}.{interaction}")
        return p

    @staticmethod
    def require_role(access: Access, *roles: str) -> Principal:
        p = _principal(access)
        if p.role not in roles:
            raise Forbidden(f"a {p.role} may not do this (needs {' or '.join(roles)})")
        return p

    # -- a patient's records --------------------------------------------------------------

    async def patient(
        self,
        access: Access,
        person: str,
        resource_type: str,
        interaction: str = "s",
        *,
        only_at: str | None = None,
    ) -> None:
        """Allow reading ``person``'s records (of ``resource_type``) or raise Forbidden.

        ``only_at``: the request reads one facility's records only (a facility's own
        endpoint), so a clinician of that facility needs no more.
        """
        p = self.require_scope(access, resource_type, interaction)
        access.patient = person
        reason = await self._refusal(access, p, person, only_at)
        if reason is not None:
            raise Forbidden(reason)

    async def may_read(self, access: Access, person: str | None, holder: str) -> bool:
        """Whether one result (a study, a record) held at ``holder`` may be shown: the
        check behind searches whose results span patients (city-wide QIDO)."""
        p = _principal(access)
        if person is None:
            return p.role == "service" or (p.role == "clinician" and holder == p.facility_id)
        return await self._refusal(access, p, person, holder) is None

    async def _refusal(
        self, access: Access, p: Principal, person: str, only_at: str | None
    ) -> str | None:
        if p.role == "service":
            return None
        if p.role in NO_PATIENT_DATA:
            return f"a {p.role} does not read patients' records"
        if p.role == "resident":
            if access.share is not None and not access.share_unlocked:
                return "the link's second factor has not been answered"
            if await self._resident_person(p) == person:
                return None
            return "a resident reads only their own records"
        # A clinician.
        facility = p.facility_id or ""
        if only_at is not None and only_at == facility:
            return None
        if await self.cared_for(person, facility):
            return None
        if access.break_glass:
            access.broke_glass = True
            return None
        return (
            "no care relationship, referral or consent links this patient to "
            f"{facility}: state a break-the-glass reason to proceed"
        )

    async def cared_for(self, person: str, facility: str) -> bool:
        """The patient is registered at the facility (an encounter), referred to it, or
        consented to it (or to every facility). Remembered for RELATION_TTL seconds."""
        key = (person, facility)
        now = time.monotonic()
        known = self._relations.get(key)
        if known is not None and known[1] > now:
            return known[0]
        linked = any(
            i.facility_id == facility for i in await self._store.identifiers_for(person)
        ) or any(
            g.facility_id in (facility, ANY_FACILITY)
            for g in await active_grants(self._store, person)
        )
        if len(self._relations) >= _RELATIONS_MAX:
            self._relations.clear()
        self._relations[key] = (linked, now + RELATION_TTL)
        return linked

    def forget(self, person: str) -> None:
        """Drop what is remembered of a person (a grant was made or revoked here)."""
        for key in [k for k in self._relations if k[0] == person]:
            del self._relations[key]

    async def _resident_person(self, p: Principal) -> str | None:
        if p.patient is None:
            return None
        if p.patient not in self._residents:
            found = await self._store.person(p.patient)
            self._residents[p.patient] = found.person_key if found else None
        return self._residents[p.patient]

    async def resident_person(self, access: Access) -> str | None:
        """The person a resident's token names (None for other roles)."""
        p = _principal(access)
        return await self._resident_person(p) if p.role == "resident" else None

    @staticmethod
    def share_study(access: Access, holder: str, study: str, day: date | None) -> None:
        """Through a share, only the studies it covers (``day``: the study's date, which a
        visit's share needs); raise Forbidden otherwise. Other requests pass."""
        share = access.share
        if share is None or covers(share, holder, study=study, day=day):
            return
        raise Forbidden("the link does not cover this study")

    def store(self, access: Access, facility: str) -> None:
        """Allow storing records into ``facility`` (a clinician of it, or a service)."""
        p = self.require_scope(access, "ImagingStudy", "c")
        access.holders.add(facility)
        if p.role == "service" or (p.role == "clinician" and p.facility_id == facility):
            return
        raise Forbidden(f"a {p.role} of {p.facility_id} may not store into {facility}")

    async def visible(self, access: Access, person: str) -> bool:
        """Whether the person may be listed to the asker (a search by name); the glass is not
        broken for a list."""
        p = _principal(access)
        saved = access.break_glass
        access.break_glass = None
        try:
            return await self._refusal(access, p, person, None) is None
        finally:
            access.break_glass = saved

    @staticmethod
    def holders(access: Access, facilities: Iterable[str]) -> None:
        access.holders.update(facilities)


def _principal(access: Access) -> Principal:
    if access.principal is None:  # the guard authenticates before any handler runs
        raise Forbidden("not authenticated")
    return access.principal
