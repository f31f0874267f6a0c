"""The `huren` command: demo, serve, simulate, seed, token, share, facility (DESIGN.md contract
table)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Settings
from .errors import GatewayError
from .logs import setup_logging
from .tokens import ROLES


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        settings = Settings.load(
            config_file=args.config,
            overrides={
                "data_dir": args.data_dir,
                "port": getattr(args, "port", None),
                "host": getattr(args, "host", None),
                "dimse_port": getattr(args, "dimse_port", None),
                "database_url": getattr(args, "database_url", None),
                "redis_url": getattr(args, "redis_url", None),
                "log_level": args.log_level,
                "log_format": args.log_format,
            },
        )
        setup_logging(settings.log_level, settings.log_format)
        result: int = args.run(args, settings)
        return result
    except GatewayError as exc:
        print(f"huren: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huren", description="Huren (互认) imaging and lab-result gateway"
    )
    p.add_argument("--config", type=Path, help="TOML settings file (also HUREN_CONFIG)")
    p.add_argument(
        "--data-dir", type=Path, help="data directory (HUREN_DATA_DIR; default ./huren-data)"
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING … (HUREN_LOG_LEVEL)")
    p.add_argument("--log-format", choices=["json", "text"], help="(HUREN_LOG_FORMAT)")
    sub = p.add_subparsers(title="commands")

    demo = sub.add_parser("demo", help="seed if needed, start the simulated city and the gateway")
    _server_flags(demo)
    demo.add_argument("--patients", type=int, default=100)
    demo.add_argument("--seed", type=int, default=20261124)
    demo.add_argument("--latency-ms", type=float, default=5.0, help="simulated upstream latency")
    demo.set_defaults(run=_run_demo)

    serve = sub.add_parser("serve", help="run the gateway against the registry's facilities")
    _server_flags(serve)
    serve.set_defaults(run=_run_serve)

    sim = sub.add_parser("simulate", help="serve every facility of the registry on loopback")
    sim.add_argument("--latency-ms", type=float, default=0.0, help="latency of every facility")
    sim.add_argument("--slow", action="append", default=[], metavar="F001=MS")
    sim.add_argument("--down", action="append", default=[], metavar="F002")
    sim.add_argument("--garbage", action="append", default=[], metavar="F003")
    sim.add_argument("--control-port", type=int, default=17999, help="fault-injection API port")
    sim.add_argument(
        "--move-dest",
        action="append",
        default=[],
        metavar="AE=HOST:PORT",
        help="a C-MOVE destination the simulated PACS know (HUREN=127.0.0.1:11112 by default)",
    )
    sim.set_defaults(run=_run_simulate)

    seed = sub.add_parser("seed", help="generate the deterministic seed data")
    seed.add_argument("--patients", type=int, default=100)
    seed.add_argument("--seed", type=int, default=20261124)
    seed.set_defaults(run=_run_seed)

    token = sub.add_parser(
        "token", help="print a bearer token signed with the data dir's dev keys (demo, tests)"
    )
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--facility", help="registry id the user acts for (clinician, integrator)")
    token.add_argument("--subject", help="the token's sub (default dev-ROLE)")
    token.add_argument(
        "--scope", help='space-separated SMART scopes (default by role, e.g. "user/*.rs")'
    )
    token.add_argument(
        "--purpose", help="purpose of use, a v3-ActReason code (default TREAT for clinicians)"
    )
    token.add_argument("--patient", help="the gateway's Patient.id (required for residents)")
    token.add_argument("--name", help="the user's display name")
    token.add_argument(
        "--lifetime", type=float, default=8 * 3600, help="seconds until it expires (default 8 h)"
    )
    token.set_defaults(run=_run_token)

    share = sub.add_parser(
        "share", help="print a resident's share link (cloud film) and its second factor"
    )
    share.add_argument("--patient", required=True, help="the resident's national ID number")
    share.add_argument("--study", help="one study (StudyInstanceUID); default all their records")
    share.add_argument("--facility", help="the study's facility (found by asking the city if not)")
    share.add_argument("--visit-date", help="a visit: YYYY-MM-DD at --facility")
    share.add_argument("--days", type=float, help="days the link lasts (default 30)")
    share.add_argument(
        "--second-factor",
        choices=["none", "id4", "pin"],
        default="id4",
        help="what the finder of a lost printout would not know (default: last 4 of the ID)",
    )
    share.add_argument("--host", help="the gateway's address in the link (default 127.0.0.1)")
    share.add_argument("--port", type=int, help="the gateway's port in the link (default 8080)")
    share.set_defaults(run=_run_share)

    facility = sub.add_parser(
        "facility", help="register, change, disable or check a facility (no restart needed)"
    )
    actions = facility.add_subparsers(title="actions", dest="action", required=True)
    for name, helptext in (
        ("add", "register a facility from a JSON file (the registry's form; it starts pending)"),
        ("update", "change a registered facility from a JSON file"),
    ):
        one = actions.add_parser(name, help=helptext)
        one.add_argument("file", type=Path, help="the facility as JSON (optional credentials)")
        one.set_defaults(run=_run_facility)
    for name, helptext in (
        ("disable", "stop asking a facility"),
        ("check", "run the conformance self-test against its systems; pass puts it live"),
    ):
        one = actions.add_parser(name, help=helptext)
        one.add_argument("id", help="the facility's registry id, e.g. F112")
        one.set_defaults(run=_run_facility)
    return p


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (HUREN_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (HUREN_PORT; default 8080)")
    p.add_argument(
        "--dimse-port", type=int, help="DIMSE SCP port (HUREN_DIMSE_PORT; default 11112)"
    )
    p.add_argument("--database-url", help="PostgreSQL URL (HUREN_DATABASE_URL); default SQLite")
    p.add_argument("--redis-url", help="Redis URL (HUREN_REDIS_URL); default in-process")


def _run_seed(args: argparse.Namespace, settings: Settings) -> int:
    from seeds.generator import main_seed

    main_seed(settings.data_dir, args.patients, args.seed)
    return 0


def _run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .server import serve

    asyncio.run(serve(settings))
    return 0


def _run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return asyncio.run(
        run_demo(settings, patients=args.patients, seed=args.seed, latency_ms=args.latency_ms)
    )


def _run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from seeds.faults import parse_fault_flags
    from seeds.simulator import run_simulator

    try:
        faults = parse_fault_flags(slow=args.slow, down=args.down, garbage=args.garbage)
        moves = dict(_move_dest(spec) for spec in args.move_dest) or None
    except ValueError as exc:
        print(f"huren simulate: {exc}", file=sys.stderr)
        return 2
    asyncio.run(
        run_simulator(
            settings,
            latency_ms=args.latency_ms,
            faults=faults,
            control_port=args.control_port,
            move_destinations=moves,
        )
    )
    return 0


def _run_token(args: argparse.Namespace, settings: Settings) -> int:
    from .tokens import DEV_ISSUER, dev_keys, mint

    private_pem, jwks = dev_keys(settings.data_dir)
    purpose = args.purpose or ("TREAT" if args.role == "clinician" else None)
    try:
        token = mint(
            private_pem,
            jwks["keys"][0]["kid"],
            subject=args.subject or f"dev-{args.role}",
            role=args.role,
            facility=args.facility,
            scopes=args.scope,
            purpose_of_use=purpose,
            patient=args.patient,
            name=args.name,
            lifetime=args.lifetime,
            issuer=settings.auth_issuer or DEV_ISSUER,
            audience=settings.auth_audience,
        )
    except ValueError as exc:
        print(f"huren token: {exc}", file=sys.stderr)
        return 2
    if settings.auth_jwks is not None:
        print(
            f"huren token: warning: the gateway verifies with {settings.auth_jwks}, "
            "which accepts this dev token only if it lists the dev key",
            file=sys.stderr,
        )
    print(token)
    return 0


def _run_share(args: argparse.Namespace, settings: Settings) -> int:
    from .share_cli import make_share

    try:
        lines = asyncio.run(
            make_share(
                settings,
                patient=args.patient,
                study=args.study,
                facility=args.facility,
                visit_date=args.visit_date,
                days=args.days,
                second_factor=args.second_factor,
            )
        )
    except ValueError as exc:
        print(f"huren share: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _run_facility(args: argparse.Namespace, settings: Settings) -> int:
    from .facility_cli import run_facility

    try:
        code, lines = asyncio.run(run_facility(settings, args.action, args))
    except ValueError as exc:
        print(f"huren facility: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return code


def _move_dest(spec: str) -> tuple[str, tuple[str, int]]:
    ae, _, where = spec.partition("=")
    host, _, port = where.rpartition(":")
    if not ae or not host or not port.isdigit():
        raise ValueError(f"--move-dest expects AE=HOST:PORT, got {spec!r}")
    return ae, (host, int(port))


if __name__ == "__main__":
    sys.exit(main())
