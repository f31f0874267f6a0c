"""Imaging search through the federation: one query, every facility, in each one's terms."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar

import orjson

from adapters.errors import UpstreamError
from adapters.types import (
    DicomJson,
    ImagingAdapter,
    RetrievedInstance,
    StoredInstance,
    StudyQuery,
    Target,
)

from .cache import Cache
from .errors import FacilityUnavailable, NotFound
from .federation import FederatedResult, Federation
from .identity import is_national_id, mrns_by_facility, resolve_person
from .registry import Registry
from .storage import Store
from .upstreams import Upstreams

T = TypeVar("T")


class ImagingService:
    def __init__(
        self,
        registry: Registry,
        federation: Federation,
        upstreams: Upstreams,
        store: Store,
        cache: Cache,
        *,
        query_ttl: float = 10.0,
        series_ttl: float = 3600.0,
    ) -> None:
        #: Seconds a facility's answer to a study search is reused (0: never).
        self.query_ttl = query_ttl
        #: Seconds a study's list of series is reused (0: never).
        self.series_ttl = series_ttl
        self._answers: dict[str, tuple[float, list[DicomJson]]] = {}
        self._generations: dict[str, tuple[float, bytes]] = {}
        self._series_kept: dict[str, tuple[float, list[DicomJson]]] = {}
        self.registry = registry
        self.federation = federation
        self.upstreams = upstreams
        self.store = store
        self.cache = cache

    async def search_studies(
        self,
        match: Mapping[str, str],
        *,
        facility_ids: Iterable[str] | None = None,
        limit: int | None = None,
        include: tuple[str, ...] = (),
    ) -> FederatedResult[DicomJson]:
        """Study-level search across facilities.

        A PatientID that names a known person (their national ID number, or a facility's MRN
        with its IssuerOfPatientID) is translated into each facility's own MRN, and only the
        facilities that know the person are asked.
        """
        targets = (
            [fid for fid in facility_ids if self._live(fid)]
            if facility_ids is not None
            else self.upstreams.imaging_facilities()
        )
        per_facility = {fid: dict(match) for fid in targets}
        patient_id = match.get("PatientID", "")
        if patient_id and "*" not in patient_id and "?" not in patient_id:
            issuer = match.get("IssuerOfPatientID")
            person = await resolve_person(self.store, self.registry, patient_id, issuer)
            if person is not None:
                mrns = await mrns_by_facility(self.store, self.registry, person)
                targets = [fid for fid in targets if fid in mrns]
                per_facility = {fid: _with_mrn(match, mrns[fid]) for fid in targets}
            elif issuer:
                holder = self.registry.by_issuer(issuer)
                targets = [fid for fid in targets if holder is not None and fid == holder.id]
                per_facility = {fid: _with_mrn(match, patient_id) for fid in targets}

        async def call(fid: str) -> list[DicomJson]:
            query = StudyQuery(match=per_facility[fid], limit=limit, include=include)
            return await self._cached_studies(fid, query)

        return await self.federation.fan_out(targets, call, operation="search-studies")

    async def _cached_studies(self, fid: str, query: StudyQuery) -> list[DicomJson]:
        """A facility's study search, answered from the query cache for QUERY_TTL seconds.

        Doctors look the same patient's studies up again and again (a ward round, a
        consultation); a store into the facility through the gateway starts a new cache
        generation for it, so what was just stored is found at once.
        """
        if self.query_ttl <= 0:
            return await self.upstreams.imaging(fid).search_studies(query)
        generation = await self._generation(fid)
        digest = hashlib.sha256(
            orjson.dumps([query.match, query.limit, query.include], option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:32]
        key = f"qido:{fid}:{generation.decode()}:{digest}"
        # Kept parsed here too, for as long as the shared cache may still hand it out.
        return await self._read_through(
            key,
            self.query_ttl,
            self._answers,
            self.query_ttl,
            lambda: self.upstreams.imaging(fid).search_studies(query),
        )

    async def _read_through(
        self,
        key: str,
        ttl: float,
        kept: dict[str, tuple[float, list[DicomJson]]],
        kept_seconds: float,
        fetch: Callable[[], Awaitable[list[DicomJson]]],
    ) -> list[DicomJson]:
        """The answer under ``key``: parsed from ``kept`` in this process, else from the
        shared cache, else fetched (and put in the shared cache for ``ttl`` seconds); then
        kept parsed here for ``kept_seconds``."""
        now = time.monotonic()
        parsed = kept.get(key)
        if parsed is not None and parsed[0] > now:
            return parsed[1]
        cached = await self.cache.get(key)
        if cached is not None:
            found: list[DicomJson] = orjson.loads(cached)
        else:
            found = await fetch()
            await self.cache.set(key, orjson.dumps(found), ttl=ttl)
        if len(kept) >= _ANSWERS_KEPT:
            kept.clear()
        kept[key] = (now + kept_seconds, found)
        return found

    async def _generation(self, fid: str) -> bytes:
        """The facility's query-cache generation, read from the shared cache at most once a
        second (a store through another gateway process is seen within that second)."""
        now = time.monotonic()
        kept = self._generations.get(fid)
        if kept is not None and kept[0] > now:
            return kept[1]
        generation = await self.cache.get(f"qido-gen:{fid}") or b"0"
        self._generations[fid] = (now + GENERATION_SECONDS, generation)
        return generation

    async def study_patient(self, fid: str, study: str) -> str | None:
        """The person (national ID) a study at ``fid`` belongs to, None when the gateway
        does not know them; remembered like the study's holder."""
        key = f"study-patient:{fid}:{study}"
        cached = await self.cache.get(key)
        if cached is not None:
            return cached.decode() or None
        query = StudyQuery(match={"StudyInstanceUID": study}, limit=1)
        found = await self._call(fid, lambda _: self._cached_studies(fid, query))
        if not found:
            raise NotFound(f"{fid} holds no study {study}")
        person = await self.person_of(fid, found[0])
        await self.cache.set(key, (person or "").encode(), ttl=STUDY_HOLDER_TTL)
        return person

    async def person_of(self, fid: str, ds: DicomJson) -> str | None:
        """The person a study's PatientID (at facility ``fid``) names, if known."""
        patient_id = _first(ds, "00100020")
        if not patient_id:
            return None
        issuer = _first(ds, "00100021")
        if issuer is None:  # an MRN of the facility that answered, unless a national ID
            facility = self.registry[fid]
            if is_national_id(patient_id):
                return patient_id
            return await self.store.person_for(facility.mrn_system, patient_id)
        return await resolve_person(self.store, self.registry, patient_id, issuer)

    def _live(self, facility_id: str) -> bool:
        """Registered and live: a pending facility (its check not passed) or a disabled one
        answers nobody's searches, not even at its own endpoint."""
        facility = self.registry.get(facility_id)
        return facility is not None and facility.live

    async def study_series(self, fid: str, study: str) -> list[DicomJson]:
        """The series of a study held at ``fid``, with their modality and body part (what
        recognition looks at, and what an ImagingStudy lists); [] when the facility cannot
        say. Reused for ``series_ttl`` seconds: a store through the gateway starts a new
        generation for the facility, so what it adds is seen at once."""
        query = StudyQuery(match={}, limit=None, include=SERIES_INCLUDE)
        if self.series_ttl <= 0:
            return await self._series(fid, study, query)
        generation = await self._generation(fid)
        # Every look-up of a patient's studies asks for them: kept parsed here for a short
        # while too (the shared cache is the one that outlives a process).
        return await self._read_through(
            f"study-series:{fid}:{generation.decode()}:{study}",
            self.series_ttl,
            self._series_kept,
            min(self.series_ttl, SERIES_KEPT_SECONDS),
            lambda: self._series(fid, study, query),
        )

    async def _series(self, fid: str, study: str, query: StudyQuery) -> list[DicomJson]:
        try:
            return await self._call(fid, lambda a: a.search_series(study, query))
        except (UpstreamError, FacilityUnavailable, NotFound):
            return []

    async def series_of_studies(
        self, studies: Sequence[tuple[str, DicomJson]]
    ) -> list[list[DicomJson]]:
        """``study_series`` of each (facility, study-level dataset), asked side by side; those
        kept in this process are answered without a task each (every look-up of a patient's
        studies comes here)."""
        out: list[list[DicomJson] | None] = [
            self._series_in_process(fid, ds) for fid, ds in studies
        ]
        missing = [i for i, found in enumerate(out) if found is None]
        if missing:
            limit = asyncio.Semaphore(16)

            async def one(fid: str, ds: DicomJson) -> list[DicomJson]:
                uid = _first(ds, "0020000D")
                if uid is None:
                    return []
                async with limit:
                    return await self.study_series(fid, uid)

            found = await asyncio.gather(*(one(*studies[i]) for i in missing))
            for i, series in zip(missing, found, strict=True):
                out[i] = series
        return [series or [] for series in out]

    def _series_in_process(self, fid: str, ds: DicomJson) -> list[DicomJson] | None:
        uid = _first(ds, "0020000D")
        generation = self._generations.get(fid)
        if uid is None or generation is None or self.series_ttl <= 0:
            return None
        now = time.monotonic()
        if generation[0] <= now:
            return None
        kept = self._series_kept.get(f"study-series:{fid}:{generation[1].decode()}:{uid}")
        return kept[1] if kept is not None and kept[0] > now else None

    # -- one study, at the facility that holds it -------------------------------------------

    async def holder(self, facility_id: str | None, study: str) -> str:
        """The facility to ask about a study: the one named, else the one found to hold it.

        Where a study lives is learned by a federated search and remembered for a while, so
        opening a study's series after finding it does not ask 111 facilities again.
        """
        if facility_id is not None:
            if not self._live(facility_id):
                raise NotFound(f"no facility {facility_id} is live")
            return facility_id
        key = f"study-holder:{study}"
        cached = await self.cache.get(key)
        if cached is not None:
            return cached.decode()
        result = await self.search_studies({"StudyInstanceUID": study}, limit=1)
        holders = [fid for fid, _ in result.items]
        if not holders and not result.complete:
            # Not found, but not every facility answered: it may be at one that did not.
            raise FacilityUnavailable(
                f"study not found; {len(result.failures)} facilities did not answer"
            )
        if not holders:
            raise NotFound(f"no facility holds study {study}")
        await self.cache.set(key, holders[0].encode(), ttl=STUDY_HOLDER_TTL)
        # Whose study it is comes with the answer: the access check needs it next.
        person = await self.person_of(holders[0], result.items[0][1])
        await self.cache.set(
            f"study-patient:{holders[0]}:{study}", (person or "").encode(), ttl=STUDY_HOLDER_TTL
        )
        return holders[0]

    async def search_series(
        self,
        facility_id: str | None,
        study: str,
        match: Mapping[str, str],
        limit: int | None,
        include: tuple[str, ...] = (),
    ) -> tuple[str, list[DicomJson]]:
        fid = await self.holder(facility_id, study)
        query = StudyQuery(match, limit, include)
        found = await self._call(fid, lambda a: a.search_series(study, query))
        return fid, found

    async def search_instances(
        self,
        facility_id: str | None,
        study: str,
        series: str | None,
        match: Mapping[str, str],
        limit: int | None,
        include: tuple[str, ...] = (),
    ) -> tuple[str, list[DicomJson]]:
        fid = await self.holder(facility_id, study)
        query = StudyQuery(match, limit, include)
        found = await self._call(fid, lambda a: a.search_instances(study, series, query))
        return fid, found

    async def metadata(
        self, facility_id: str | None, target: Target
    ) -> tuple[str, list[DicomJson]]:
        fid = await self.holder(facility_id, target.study)
        return fid, await self._call(fid, lambda a: a.metadata(target))

    async def retrieve(
        self, facility_id: str | None, target: Target
    ) -> tuple[str, AsyncIterator[RetrievedInstance]]:
        """The holder and its instances; the first is fetched before returning, so a missing
        study or a dead facility is an error the face can still answer with a status."""
        fid = await self.holder(facility_id, target.study)
        instances = self._adapter(fid).retrieve(target)
        try:
            first = await anext(instances)
        except StopAsyncIteration:
            raise NotFound("nothing to retrieve") from None
        except UpstreamError as exc:
            self._record(fid, exc)
            raise
        self.federation.breaker(fid).record_success()

        async def all_of_them() -> AsyncIterator[RetrievedInstance]:
            yield first
            async for inst in instances:
                yield inst

        return fid, all_of_them()

    async def store_instances(
        self, facility_id: str, instances: Sequence[StoredInstance]
    ) -> list[int]:
        """Store into the facility's archive (its PACS, or the gateway's own for facilities
        without one); a DICOM status per instance."""
        if self.registry.get(facility_id) is None:
            raise NotFound(f"no facility {facility_id}")
        try:
            return await self._call(facility_id, lambda a: a.store(instances))
        finally:  # what was stored must be found by the next search
            await self.cache.incr(f"qido-gen:{facility_id}")
            self._generations.pop(facility_id, None)

    def _adapter(self, fid: str) -> ImagingAdapter:
        if not self.federation.breaker(fid).allow():
            raise FacilityUnavailable(f"{fid} is not answering (circuit breaker open)")
        return self.upstreams.imaging(fid)

    async def _call(self, fid: str, work: Callable[[ImagingAdapter], Awaitable[T]]) -> T:
        adapter = self._adapter(fid)
        try:
            async with asyncio.timeout(self.federation.policy.deadline * 2):
                result = await work(adapter)
        except UpstreamError as exc:
            self._record(fid, exc)
            raise
        except TimeoutError:
            self.federation.breaker(fid).record_failure()
            raise
        self.federation.breaker(fid).record_success()
        return result

    def _record(self, fid: str, exc: UpstreamError) -> None:
        # A 404 is an answer, not a failure of the facility.
        if exc.status == 404:
            self.federation.breaker(fid).record_success()
        else:
            self.federation.breaker(fid).record_failure()


#: Seconds a facility's query-cache generation is trusted without asking the shared cache.
GENERATION_SECONDS = 1.0
#: Parsed study-search answers kept in this process (the shared cache holds them as bytes).
_ANSWERS_KEPT = 10_000
#: What a series search asks for beyond the defaults: the body part (PS3.18 Table 10.6.1-5
#: does not return it unless asked).
SERIES_INCLUDE: Final = ("BodyPartExamined",)
#: Seconds a study's series are kept parsed in this process.
SERIES_KEPT_SECONDS = 60.0
#: Seconds the holder of a study is remembered.
STUDY_HOLDER_TTL = 600.0


def _first(ds: DicomJson, tag: str) -> str | None:
    values = (ds.get(tag) or {}).get("Value") or []
    return str(values[0]) if values and values[0] not in (None, "") else None


def _with_mrn(match: Mapping[str, str], mrn: str) -> dict[str, str]:
    out = {k: v for k, v in match.items() if k != "IssuerOfPatientID"}
    out["PatientID"] = mrn
    return out
