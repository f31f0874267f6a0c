"""The core's parts, opened together and closed in reverse: what every face works through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import get_args

import aiohttp

from adapters.archive import Archive

from . import metrics
from .access import Policy
from .audit import AuditTrail, audit_lookup
from .cache import Cache, MemoryCache, open_cache
from .config import Settings
from .credentials import Vault
from .facility_admin import FacilityAdmin
from .federation import Federation, FederationPolicy
from .imaging import ImagingService
from .lab import LabService
from .lab_codes import DEFAULT_PATH, LabCodeMap
from .lookup_stats import BufferedCounters, LookupCounters, rebuild
from .rate_limit import RateLimiter
from .readiness import Prober
from .recognition import Recognition, city_today
from .recognition_catalogue import MAX_VALIDITY_DAYS, Kind, load_catalogue
from .recognition_decisions import recognition_decision  # noqa: F401  (its table is created)
from .registry import Registry, load_registry
from .shares import Shares, share_secret
from .storage import Store, database_url_for
from .tokens import TokenVerifier
from .upstreams import Upstreams

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Core:
    settings: Settings
    registry: Registry
    store: Store
    cache: Cache
    archive: Archive
    federation: Federation
    upstreams: Upstreams
    imaging: ImagingService
    lab: LabService
    lab_codes: LabCodeMap
    recognition: Recognition
    shares: Shares
    facilities: FacilityAdmin
    tokens: TokenVerifier
    policy: Policy
    audit: AuditTrail
    lookups: BufferedCounters
    rate_limiter: RateLimiter
    prober: Prober
    executor: ThreadPoolExecutor
    #: The client session every HTTP upstream call shares (conformance checks use it too).
    http: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def open_core(settings: Settings, *, probe: bool = True) -> AsyncIterator[Core]:
    registry = await asyncio.to_thread(load_registry, settings.registry_path)
    lab_codes = await asyncio.to_thread(LabCodeMap.load, settings.lab_codes_path or DEFAULT_PATH)
    catalogue = await asyncio.to_thread(
        load_catalogue, settings.recognition_catalogue_path, registry
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="huren-worker")
    store = await Store.open(database_url_for(settings.data_dir, settings.database_url))
    cache = await open_cache(settings.redis_url)
    archive = await asyncio.to_thread(Archive(settings.data_dir / "archive").open)
    # One client session for every HTTP upstream; a per-request timeout under the
    # federation's deadline, and a pool wide enough for a fan-out to every facility at once.
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=max(settings.federation_deadline * 2, 10)),
        connector=aiohttp.TCPConnector(limit=512, limit_per_host=16, ttl_dns_cache=300),
    )
    federation = Federation(
        FederationPolicy(
            deadline=settings.federation_deadline,
            concurrency=settings.federation_concurrency,
            failure_threshold=settings.breaker_failures,
            reset_after=settings.breaker_reset,
        )
    )
    upstreams = Upstreams(
        registry,
        session,
        executor,
        archive,
        ae_title=settings.ae_title,
        dimse_timeout=max(settings.federation_deadline * 2, 5),
    )
    prober = Prober(registry, upstreams)
    tokens = await asyncio.to_thread(
        TokenVerifier.for_settings,
        settings.data_dir,
        settings.auth_jwks,
        settings.auth_issuer,
        settings.auth_audience,
    )
    secret = await asyncio.to_thread(share_secret, settings.data_dir, settings.share_secret)
    counters = LookupCounters(cache)
    if isinstance(cache, MemoryCache):
        # In-process counters start empty: count them again from the audit trail.
        await rebuild(store.engine, counters, table=audit_lookup)
    lookups = BufferedCounters(counters)
    audit = AuditTrail(store, lookups, enabled=settings.audit)
    recognition = Recognition(catalogue, registry)
    _watch_quality_control(recognition, settings.qc_warning_days)
    facilities = FacilityAdmin(store, cache, registry, upstreams, recognition, Vault(secret))
    await facilities.load()
    core = Core(
        settings=settings,
        registry=registry,
        store=store,
        cache=cache,
        archive=archive,
        federation=federation,
        upstreams=upstreams,
        imaging=ImagingService(
            registry,
            federation,
            upstreams,
            store,
            cache,
            query_ttl=settings.query_cache_ttl,
            series_ttl=settings.study_series_ttl,
        ),
        lab=LabService(registry, federation, upstreams, store, lab_codes),
        lab_codes=lab_codes,
        recognition=recognition,
        shares=Shares(store, cache, secret),
        facilities=facilities,
        tokens=tokens,
        policy=Policy(store),
        audit=audit,
        lookups=lookups,
        rate_limiter=RateLimiter(
            cache,
            per_user=settings.rate_limit_user,
            per_facility=settings.rate_limit_facility,
            per_share=settings.rate_limit_share,
        ),
        prober=prober,
        executor=executor,
        http=session,
    )
    probing: asyncio.Task[None] | None = None
    audit.start()
    lookups.start()
    facilities.start()
    try:
        if probe:
            await prober.probe()
            probing = asyncio.create_task(prober.run(settings.probe_interval))
        yield core
    finally:
        if probing is not None:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
        await facilities.stop()
        await audit.stop()
        await lookups.stop()
        await session.close()
        await upstreams.close()
        await cache.close()
        await store.close()
        executor.shutdown(wait=False, cancel_futures=True)


def _watch_quality_control(recognition: Recognition, within_days: int) -> None:
    """Warn, in the log now and in the metrics on every scrape, of quality-control passes about
    to end: the catalogue is the region's yearly publication, and a facility whose passes lapse
    loses the HR mark on every result it produces from the next day."""
    soon = recognition.lapsing(city_today(), within_days)
    if soon:
        first = soon[0]
        log.warning(
            "catalogue %s: quality control of %d facilities ends within %d days (first %s, %s);"
            " publish the next passes",
            recognition.version,
            len({x.facility for x in soon}),
            within_days,
            first.covered_until.isoformat(),
            first.facility,
        )

    def lapsing_count(kind: Kind) -> float:
        today = city_today()
        return sum(1 for x in recognition.lapsing(today, within_days) if x.kind == kind)

    def days_left(kind: Kind) -> float:
        covered = recognition.lapsing(city_today(), MAX_VALIDITY_DAYS)
        return min((x.days_left for x in covered if x.kind == kind), default=float("nan"))

    for kind in get_args(Kind):
        metrics.QC_LAPSING.labels(kind).set_function(partial(lapsing_count, kind))
        metrics.QC_DAYS_LEFT.labels(kind).set_function(partial(days_left, kind))
