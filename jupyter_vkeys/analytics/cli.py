"""``jupyter vkeys anomalies | export-focus | simulate``: the analyst's commands.

:func:`register` is called by :func:`jupyter_vkeys.cli.build_parser` to add the
subcommands; each handler parses nothing itself and imports its module on use, so
``jupyter vkeys --help`` stays fast. Bad input (an unreadable time, a missing
warehouse, an unknown output format) exits with a message saying what was wrong,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path


def parse_time(text: str | None, flag: str) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC; a date means its midnight)
    as an aware UTC datetime; ``SystemExit`` naming the flag when it does not parse."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"jupyter vkeys: {flag} {text!r} is not an ISO 8601 time "
                         "(e.g. 2026-11-01 or 2026-11-01T09:00:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _friendly(handler):
    """Turn an unreadable warehouse (a corrupt or foreign file DuckDB cannot read, a
    directory without permission) into a one-line message instead of a traceback."""
    import functools

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        import duckdb

        try:
            return handler(args)
        except (duckdb.Error, OSError) as exc:
            where = getattr(args, "warehouse", None) or "the default warehouse"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SystemExit(f"jupyter vkeys: could not read {where}: {first}") from None
    return run


def _warehouse_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", help="warehouse directory (events/date=YYYY-MM-DD/"
                        "*.parquet) or gateway data directory (default: $VKEYS_DATA_DIR or "
                        "<jupyter data dir>/vkeys)")


def _open(args: argparse.Namespace):
    from . import source

    root = source.resolve(args.warehouse)
    if not source.has_events(root):
        raise SystemExit(f"jupyter vkeys: no events under {root} (expected "
                         f"{root}/events/date=YYYY-MM-DD/*.parquet or a journal); "
                         "`jupyter vkeys simulate --out DIR` writes a demo warehouse")
    return source.connect(root)


def _period(args: argparse.Namespace, default_hours: float) -> tuple[datetime, datetime]:
    until = parse_time(args.until, "--until") or datetime.now(timezone.utc)
    since = parse_time(args.since, "--since") or until - timedelta(hours=default_hours)
    if since >= until:
        raise SystemExit(f"jupyter vkeys: --since ({since.isoformat()}) must be before "
                         f"--until ({until.isoformat()})")
    return since, until


# -- simulate -------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    """Write a simulated warehouse to ``--out``."""
    import time

    from .simulate import LABELS_FILE, simulate

    for name in ("days", "users", "teams"):
        if getattr(args, name) < 1:
            raise SystemExit(f"jupyter vkeys: --{name} must be at least 1 (got "
                             f"{getattr(args, name)})")
    if args.days > 3660 or args.users > 100_000 or args.teams > args.users:
        raise SystemExit("jupyter vkeys: --days <= 3660, --users <= 100000 and "
                         "--teams <= --users")
    out = Path(args.out).expanduser()
    if (out / "events").exists() and any((out / "events").glob("date=*/*.parquet")) \
            and not args.force:
        raise SystemExit(f"jupyter vkeys: {out}/events already holds Parquet files; "
                         "pass --force to add a simulated segment beside them")
    started = time.perf_counter()
    sim = simulate(args.days, args.users, args.teams, seed=args.seed, anomalies=args.anomalies,
                   out=out, progress=not args.quiet)
    took = time.perf_counter() - started
    rows = sim.table.num_rows
    print(f"wrote {rows:,} events ({sim.start:%Y-%m-%d %H:%M} to {sim.end:%Y-%m-%d %H:%M} UTC, "
          f"{args.users} users, {args.teams} teams) to {out}/events in {took:.1f} s "
          f"({rows / took:,.0f} events/s)")
    if args.anomalies:
        print(f"{len(sim.labels)} injected anomalies labelled in {out / LABELS_FILE}")
    return 0


# -- anomalies ------------------------------------------------------------------------
def cmd_anomalies(args: argparse.Namespace) -> int:
    """Print the findings of every detector over a period (table or ``--json``)."""
    from . import detectors
    from .findings import render_table

    try:
        th = detectors.Thresholds().with_overrides(args.set or [])
    except ValueError as exc:
        raise SystemExit(f"jupyter vkeys: --set: {exc}") from None
    since, until = _period(args, default_hours=24)
    known = set(detectors.DETECTORS)
    chosen = [d.strip() for d in (args.detector or "").split(",") if d.strip()] or None
    if chosen and set(chosen) - known:
        raise SystemExit(f"jupyter vkeys: unknown detector(s) {', '.join(set(chosen) - known)};"
                         f" choose from {', '.join(sorted(known))}")
    caps = None
    if args.gateway:
        from .policies import PolicyUnavailable, fetch_caps
        try:
            caps = fetch_caps(args.gateway, args.admin_token)
        except PolicyUnavailable as exc:
            print(f"jupyter vkeys: budget caps not used: {exc}", file=sys.stderr)
    con = _open(args)
    findings = detectors.scan(con, since, until, th, chosen, budget_caps=caps)
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=1))
    else:
        print(f"{len(findings)} finding(s) from {since:%Y-%m-%d %H:%M} to "
              f"{until:%Y-%m-%d %H:%M} UTC")
        print(render_table(findings))
    return 0


# -- export-focus ---------------------------------------------------------------------
def cmd_export_focus(args: argparse.Namespace) -> int:
    """Write the period's charges as a FOCUS 1.2 dataset (Parquet or CSV)."""
    from . import focus, focus_rules

    out = Path(args.out).expanduser()
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise SystemExit(f"jupyter vkeys: --out must end in .parquet or .csv (got {out.name!r})")
    since = parse_time(args.since, "--since")
    until = parse_time(args.until, "--until")
    if since and until and since >= until:
        raise SystemExit("jupyter vkeys: --since must be before --until")
    con = _open(args)
    rows = focus.export(con, out, since, until, account_id=args.account_id,
                        account_name=args.account_name)
    print(f"wrote {rows:,} FOCUS {focus.FOCUS_VERSION} rows to {out}")
    broken = focus_rules.check(out)
    if broken:
        print(f"jupyter vkeys: {out} breaks {len(broken)} FOCUS rule(s):", file=sys.stderr)
        for violation in broken:
            print(f"  {violation}", file=sys.stderr)
        return 1
    print(f"checked against {len(focus_rules.row_rules(set(focus.MANDATORY + focus.CONDITIONAL)))}"
          " FOCUS column rules: none broken")
    return 0


def register(subparsers) -> None:
    """Add ``anomalies``, ``export-focus`` and ``simulate`` to ``jupyter vkeys``'s
    subparsers (called once by :func:`jupyter_vkeys.cli.build_parser`)."""
    sim = subparsers.add_parser("simulate", help="write a simulated warehouse (demos, tests)")
    sim.add_argument("--days", type=int, default=30, help="days of traffic (ending now)")
    sim.add_argument("--users", type=int, default=40, help="notebook users")
    sim.add_argument("--teams", type=int, default=5, help="teams the users belong to")
    sim.add_argument("--seed", type=int, default=0, help="random seed (same seed, same rows)")
    sim.add_argument("--anomalies", action="store_true",
                     help="inject anomalies and label them in anomalies.json beside events/")
    sim.add_argument("--out", required=True, help="warehouse directory to write")
    sim.add_argument("--force", action="store_true", help="write even if events exist there")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_friendly(cmd_simulate))

    an = subparsers.add_parser("anomalies", help="anomaly findings over a period "
                               "(spend spikes and drops, loops, new models, error spikes)")
    _warehouse_arg(an)
    an.add_argument("--since", help="start of the period (ISO 8601; default: 24 h before "
                                    "--until)")
    an.add_argument("--until", help="end of the period (ISO 8601; default: now)")
    an.add_argument("--json", action="store_true", help="print a JSON list of findings")
    an.add_argument("--detector", help="comma-separated detectors to run (default: all)")
    an.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="override a threshold, e.g. spike_z=4 (repeatable)")
    an.add_argument("--gateway", help="gateway URL whose admin API gives budget caps "
                                      "(adds budget exhaustion forecasts)")
    an.add_argument("--admin-token", help="admin token for --gateway (default: "
                                          "$VKEYS_ADMIN_TOKEN)")
    an.set_defaults(func=_friendly(cmd_anomalies))

    fx = subparsers.add_parser("export-focus", help="write charges as a FinOps FOCUS 1.2 "
                               "dataset (.parquet or .csv)")
    _warehouse_arg(fx)
    fx.add_argument("--since", help="first charge period (ISO 8601; default: all)")
    fx.add_argument("--until", help="end of the last charge period (ISO 8601; default: all)")
    fx.add_argument("--out", required=True, help="FILE.parquet or FILE.csv")
    fx.add_argument("--account-id", default="jupyter-vkeys", help="BillingAccountId to write")
    fx.add_argument("--account-name", default="jupyter-vkeys gateway",
                    help="BillingAccountName to write")
    fx.set_defaults(func=_friendly(cmd_export_focus))
