"""The gateway's own archive: instances of facilities without a PACS, content-addressed.

Layout under its root: ``objects/ab/<sha256>.dcm`` holds each instance once, whoever sent it;
``refs/<facility_id>.log`` lists, one per line, the digests a facility holds. Appending a line
is the commit point, so a crash mid-write leaves at worst an unreferenced object.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from pathlib import Path

from .dicom_index import DicomIndex, Instance
from .errors import UpstreamError
from .files import file_chunks, header_json
from .types import DicomJson, RetrievedInstance, StoredInstance, StudyQuery, Target


class Archive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._indexes: dict[str, DicomIndex] = {}
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def open(self) -> Archive:
        """Build the indexes from disk (blocking: call it in a thread)."""
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "refs").mkdir(parents=True, exist_ok=True)
        for log in sorted((self.root / "refs").glob("*.log")):
            fid = log.stem
            for digest in log.read_text().split():
                if digest not in self._held.setdefault(fid, set()):
                    self._held[fid].add(digest)
                    self.index(fid).add_file(self._object_path(digest))
        return self

    def index(self, facility_id: str) -> DicomIndex:
        with self._lock:
            return self._indexes.setdefault(facility_id, DicomIndex())

    def ingest(self, facility_id: str, data: bytes) -> str:
        """Store one Part 10 instance for a facility (blocking); return its digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._object_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        with self._lock:
            held = self._held.setdefault(facility_id, set())
            if digest in held:
                return digest
            held.add(digest)
            with open(self.root / "refs" / f"{facility_id}.log", "a") as log:
                log.write(digest + "\n")
        self.index(facility_id).add_file(path)
        return digest

    def _object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / f"{digest}.dcm"


#: Largest archive (in studies) searched on the event loop rather than in a thread.
INLINE_STUDIES = 2000


class ArchiveImaging:
    """One facility's view of the gateway archive, with the same face as a remote PACS."""

    def __init__(self, archive: Archive, facility_id: str, executor: Executor) -> None:
        self.archive = archive
        self.facility_id = facility_id
        self.index = archive.index(facility_id)
        self.executor = executor

    async def ping(self) -> None:
        return None

    async def search_studies(self, query: StudyQuery) -> list[DicomJson]:
        # Study records are cached in the index, so a search is a scan of small dicts: cheaper
        # inline than the thread hop (26 such hops were a tenth of a fan-out's gateway CPU).
        # A facility archive grown past INLINE_STUDIES goes to the executor instead.
        if len(self.index) <= INLINE_STUDIES:
            return self.index.search_studies(query.match, limit=query.limit)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, lambda: self.index.search_studies(query.match, limit=query.limit)
        )

    async def search_series(self, study: str, query: StudyQuery) -> list[DicomJson]:
        return self.index.search_series(study, query.match, limit=query.limit)

    async def search_instances(
        self, study: str, series: str | None, query: StudyQuery
    ) -> list[DicomJson]:
        return self.index.search_instances(study, series, query.match, limit=query.limit)

    async def metadata(self, target: Target) -> list[DicomJson]:
        instances = self._instances(target)
        return [await asyncio.to_thread(header_json, i.path) for i in instances]

    async def retrieve(self, target: Target) -> AsyncIterator[RetrievedInstance]:
        for inst in self._instances(target):
            yield RetrievedInstance(inst.transfer_syntax or None, file_chunks(inst.path))

    async def store(self, instances: Sequence[StoredInstance]) -> list[int]:
        statuses = []
        for inst in instances:
            await asyncio.to_thread(self.archive.ingest, self.facility_id, inst.data)
            statuses.append(0x0000)
        return statuses

    def _instances(self, target: Target) -> list[Instance]:
        found = self.index.instances(target.study, target.series, target.instance)
        if not found:
            raise UpstreamError("no such study, series or instance in the archive", status=404)
        return found
