"""Mutual recognition: how fast the engine judges, and what verdicts add to a search.

1. Verdicts per second, one core, for a mixed batch of results: lab Observations and
   DiagnosticReports, radiology reports and ImagingStudies from the generated city, each
   judged for a random asking facility 0-90 days after the result was produced (facts read
   from the FHIR resource, then the verdict). Also the verdict alone, facts read beforehand.
2. The p50 of a patient's Observation search (FHIR) and study search (QIDO, each study's
   series asked for its body part, then kept), verdicts on and off: two gateway processes
   on the same data and simulator (20 ms upstream latency), asked in alternation so both
   see the same machine.

    python bench/recognition.py            # 100,000 results; 300 searches a side
    python bench/recognition.py --quick    # 20,000; 60

Prints readable lines, then one line of JSON with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_ENV, percentile, service_headers, wait_ready
from gateway.config import Settings
from gateway.core import open_core
from gateway.lab_codes import DEFAULT_PATH, LabCodeMap
from gateway.recognition import Facts, Recognition, facts_of_fhir
from gateway.recognition_catalogue import load_catalogue
from gateway.registry import load_registry
from gateway.seed_import import import_seed
from seeds.generator import generate
from tests.city import huren_command, start_simulator, stop_process
from tests.ports import free_port


def results(data_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(holder, resource) of every lab result and report in the seed (local item codes with
    their LOINC coding added, as the gateway answers them), and an ImagingStudy (with its
    series' modality and body part) of every study."""
    codes = LabCodeMap.load(DEFAULT_PATH)
    out: list[tuple[str, dict[str, Any]]] = []
    for path in sorted((data_dir / "seed" / "fhir").glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            resource = json.loads(line)
            if resource["resourceType"] in ("Observation", "DiagnosticReport"):
                out.append((path.stem, codes.translate(resource)))
    for study in json.loads((data_dir / "seed" / "studies.json").read_text(encoding="utf-8")):
        out.append(
            (
                study["facility_id"],
                {
                    "resourceType": "ImagingStudy",
                    "status": "available",
                    "started": study["study_datetime"],
                    "series": [
                        {
                            "uid": "1.2.3",
                            "modality": {"code": study["modality"]},
                            "bodySite": {"display": study["body_part"]},
                        }
                    ],
                },
            )
        )
    return out


def engine_rate(data_dir: Path, n: int) -> dict[str, Any]:
    registry = load_registry(None)
    engine = Recognition(load_catalogue(None, registry), registry)
    pool = results(data_dir)
    rng = random.Random(11)
    askers = [f.id for f in registry]
    batch = [
        (holder, resource, rng.choice(askers), _asked_on(resource, rng))
        for holder, resource in (rng.choice(pool) for _ in range(n))
    ]
    kinds = Counter(r["resourceType"] for _, r, _, _ in batch)
    engine.verdict(facts_of_fhir(batch[0][1], batch[0][0]), batch[0][2], batch[0][3])  # warm
    best_full = best_verdict = float("inf")
    facts: list[tuple[Facts, str, date]] = []
    for _ in range(3):
        t = time.perf_counter()
        verdicts = [
            engine.verdict(facts_of_fhir(resource, holder), asker, on)
            for holder, resource, asker, on in batch
        ]
        best_full = min(best_full, time.perf_counter() - t)
        facts = [(facts_of_fhir(r, h), a, on) for h, r, a, on in batch]
        t = time.perf_counter()
        for f, asker, on in facts:
            engine.verdict(f, asker, on)
        best_verdict = min(best_verdict, time.perf_counter() - t)
    recognised = sum(v.recognised for v in verdicts)
    reasons = Counter(r for v in verdicts for r in v.reasons)
    return {
        "n": n,
        "kinds": dict(kinds),
        "rate": n / best_full,
        "rate_verdict_only": n / best_verdict,
        "recognised": recognised,
        "marked": sum(v.mark is not None for v in verdicts),
        "reasons": {str(k): v for k, v in reasons.most_common()},
    }


def _asked_on(resource: dict[str, Any], rng: random.Random) -> date:
    """A day a clinician asks about the result: the day it was produced or up to 90 days
    later (a follow-up, a referral); mostly within the first month."""
    when = str(resource.get("effectiveDateTime") or resource.get("started") or "2025-06-01")
    return date.fromisoformat(when[:10]) + timedelta(days=int(rng.expovariate(1 / 20)) % 90)


def search_overhead(data_dir: Path, rounds: int) -> dict[str, tuple[float, float, int]]:
    """p50 (ms) of a patient's Observation search (FHIR) and study search (QIDO), verdicts
    off and on, asked in alternation; and the results an answer holds."""

    async def prepare() -> None:  # the MPI learns each resident's MRNs, as from registration
        async with open_core(Settings(data_dir=data_dir), probe=False) as core:
            await import_seed(core.store, core.archive, core.registry, data_dir)

    asyncio.run(prepare())
    sim, _ = start_simulator(data_dir, latency_ms=20.0)
    ports = {"off": free_port(), "on": free_port()}
    gateways = {}
    for name, port in ports.items():
        env = {
            **os.environ,
            **BENCH_ENV,
            "HUREN_VERDICTS": "true" if name == "on" else "false",
            "HUREN_MLLP_PORT": str(free_port()),
            "HUREN_DIMSE_PORT": str(free_port()),
            "HUREN_PROBE_INTERVAL": "3600",
        }
        gateways[name] = subprocess.Popen(
            huren_command(data_dir, "serve", "--port", str(port)), env=env
        )
    try:
        for port in ports.values():
            wait_ready(port)
        patients = json.loads((data_dir / "seed" / "patients.json").read_text(encoding="utf-8"))
        people = sorted(patients, key=lambda p: -len(p["records"]))[:20]
        searches = {
            "observation": ("/fhir/Observation", "patient.identifier", _observations_judged),
            "qido": ("/dicomweb/studies", "PatientID", _studies_judged),
        }
        out: dict[str, tuple[float, float, int]] = {}

        async def run(path: str, key: str, judged: Any) -> tuple[float, float, int]:
            latencies: dict[str, list[float]] = {"off": [], "on": []}
            sizes: list[int] = []
            async with aiohttp.ClientSession(headers=service_headers(data_dir)) as session:
                for i in range(rounds + 10):
                    nid = people[i % len(people)]["national_id"]
                    value = f"urn:oid:2.16.156.10011.1.5|{nid}" if key != "PatientID" else nid
                    order = ("off", "on") if i % 2 else ("on", "off")
                    for name in order:
                        url = f"http://127.0.0.1:{ports[name]}{path}"
                        t = time.perf_counter()
                        async with session.get(url, params={key: value}) as resp:
                            body = await resp.read()
                            assert resp.status == 200, body[:200]
                        if i < 10:
                            continue
                        latencies[name].append((time.perf_counter() - t) * 1000)
                        if name == "on":
                            sizes.append(judged(json.loads(body)))
            return (
                percentile(latencies["off"], 50),
                percentile(latencies["on"], 50),
                round(sum(sizes) / max(len(sizes), 1)),
            )

        for name, (path, key, judged) in searches.items():
            out[name] = asyncio.run(run(path, key, judged))
        return out
    finally:
        for proc in gateways.values():
            proc.terminate()
            proc.wait(15)
        stop_process(sim)


def _observations_judged(bundle: dict[str, Any]) -> int:
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert all("extension" in r for r in matches)
    return len(matches)


def _studies_judged(studies: list[dict[str, Any]]) -> int:
    assert all("00111003" in ds for ds in studies)
    return len(studies)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, rounds = (20_000, 60) if args.quick else (100_000, 300)
    data_dir = Path(tempfile.mkdtemp(prefix="huren-bench-recognition-"))
    generate(data_dir, patients=60, seed=5)
    engine = engine_rate(data_dir, n)
    print(
        f"{engine['n']:,} results ({', '.join(f'{v:,} {k}' for k, v in engine['kinds'].items())}),"
        " each asked about by a random facility, 0-90 days after it was produced"
    )
    print(
        f"  verdicts: {engine['rate']:,.0f}/s on one core, reading facts from FHIR JSON"
        f" ({engine['rate_verdict_only']:,.0f}/s for the verdict alone)"
    )
    print(
        f"  {engine['recognised']:,} recognised, {engine['marked']:,} with the HR mark;"
        f" reasons: {', '.join(f'{k} {v:,}' for k, v in engine['reasons'].items())}"
    )
    figures: dict[str, Any] = {
        "results": n,
        "verdicts_per_s": round(engine["rate"]),
        "verdicts_only_per_s": round(engine["rate_verdict_only"]),
    }
    searches = search_overhead(data_dir, rounds)
    for name, (off, on, size) in searches.items():
        added = (on - off) / off
        what = "Observation search (FHIR)" if name == "observation" else "study search (QIDO)"
        print(
            f"  {what}, one patient (~{size} results an answer), 20 ms upstream:"
            f" p50 {off:.1f} ms verdicts off, {on:.1f} ms on: {added:+.1%}"
        )
        figures |= {
            f"{name}_p50_off_ms": round(off, 1),
            f"{name}_p50_on_ms": round(on, 1),
            f"{name}_added_p50": round(added, 4),
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
