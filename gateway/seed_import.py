"""Bring seed data into the gateway: the archive of facilities without a PACS, and the MPI.

In the city this is what the facilities' registration feeds and image uploads do; for the demo
and the tests it is read from the generator's output. Idempotent: the archive deduplicates by
content and identity links are upserts.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from adapters.archive import Archive
from adapters.types import NoImaging

from .identity import import_seed_identities
from .registry import Registry
from .storage import Store

log = logging.getLogger(__name__)


def ingest_archive_facilities(archive: Archive, registry: Registry, seed_dir: Path) -> int:
    """Copy the seed instances of facilities without a PACS into the archive (blocking)."""
    n = 0
    for f in registry:
        root = seed_dir / "dicom" / f.id
        if isinstance(f.imaging, NoImaging) and root.is_dir():
            for path in sorted(root.rglob("*.dcm")):
                archive.ingest(f.id, path.read_bytes())
                n += 1
    return n


async def import_seed(store: Store, archive: Archive, registry: Registry, data_dir: Path) -> None:
    seed_dir = data_dir / "seed"
    marker = data_dir / ".seed-imported"
    manifest = (seed_dir / "manifest.json").read_text(encoding="utf-8")
    if marker.exists() and marker.read_text(encoding="utf-8") == manifest:
        return
    instances = await asyncio.to_thread(ingest_archive_facilities, archive, registry, seed_dir)
    links = await import_seed_identities(store, registry, seed_dir)
    marker.write_text(manifest, encoding="utf-8")
    log.info("seed imported", extra={"archive_instances": instances, "identity_links": links})
