"""``recgoat nightly init|run`` and ``recgoat registry show|rollback``.

Exit codes: 0 promoted or nothing to do; 3 rejected by the gate (the champion is unchanged: the
scheduler should alert); 2 bad input (a bad delta is also recorded as a ``rejected`` event);
4 another run holds the registry lock.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys

logger = logging.getLogger(__name__)
LOCKED = 4


def _config(args):
    from recgoat_dist.config import load_config
    overrides = list(args.set or [])
    if getattr(args, "registry", None):
        overrides.append(f"nightly.registry={args.registry}")
    return load_config(args.config, overrides)


def _day(text: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a date YYYY-MM-DD") from None


def _dates(spec: str) -> list[str]:
    if ".." not in spec:
        raise ValueError(f"--dates {spec!r}: expected FROM..TO (YYYY-MM-DD..YYYY-MM-DD)")
    lo, hi = (_day(x, "--dates") for x in spec.split("..", 1))
    if hi < lo:
        raise ValueError(f"--dates {spec!r}: TO is before FROM")
    return [(lo + dt.timedelta(days=d)).isoformat() for d in range((hi - lo).days + 1)]


def _guard(fn):
    """LockHeld -> exit 4 with its one-line message (bad input is main()'s exit 2)."""
    def wrapper(args):
        from recgoat_dist.nightly.registry import LockHeld
        try:
            return fn(args)
        except LockHeld as exc:
            print(f"error: {exc}", file=sys.stderr)
            return LOCKED
    return wrapper


@_guard
def _init(args) -> int:
    from recgoat_dist.nightly.night import init_registry
    date = _day(args.date, "--date").isoformat() if args.date else None
    outcome = init_registry(_config(args), args.dataset, date)
    print(outcome.message)
    return outcome.exit_code


@_guard
def _run(args) -> int:
    from recgoat_dist.nightly.night import run_night
    if bool(args.date) == bool(args.dates):
        raise ValueError("give exactly one of --date YYYY-MM-DD or --dates FROM..TO")
    config = _config(args)
    worst = 0
    for date in ([_day(args.date, "--date").isoformat()] if args.date else _dates(args.dates)):
        outcome = run_night(config, date)
        print(outcome.message)
        worst = max(worst, outcome.exit_code)
    return worst


def registry_report(url: str) -> dict:
    """The champion, every version with its decision, and what each date came to."""
    from recgoat_dist.nightly.registry import Registry

    reg = Registry(url)
    events = reg.events()
    versions = reg.versions()
    decision = {v["version"]: v["decision"] for v in versions}
    dates: dict[str, dict] = {}
    for e in events:
        if e["kind"] == "rolled_back":
            if e.get("version"):
                decision[e["version"]] = "rolled_back"
            decision[e["to"]] = "promoted"
        elif e.get("version"):
            decision[e["version"]] = e["kind"]
        if e["kind"] in ("promoted", "rejected", "failed") and e.get("date"):
            dates[e["date"]] = {"date": e["date"], "decision": e["kind"], "version": e.get("version"),
                                "reason": e.get("reason")}
    champion = reg.champion()
    return {
        "registry": reg.url,
        "champion": None if champion is None else {k: champion.get(k) for k in
                                                   ("version", "date", "metrics", "lineage", "since_utc", "reason")},
        "versions": [{"version": v["version"], "date": v["date"], "decision": decision[v["version"]],
                      "metrics": v["metrics"], "reason": v["reason"], "parent": v["lineage"].get("parent_version"),
                      "new_users": v.get("new_users"), "new_items": v.get("new_items"),
                      "train_seconds": v.get("train_seconds"), "lineage": v["lineage"]} for v in versions],
        "dates": [dates[d] for d in sorted(dates)],
        "events": events,
    }


def _fmt(x) -> str:
    return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


def _show(args) -> int:
    report = registry_report(args.registry)
    if args.json:
        slim = {**report, "versions": [{k: v for k, v in row.items() if k != "lineage" or args.lineage}
                                       for row in report["versions"]]}
        print(json.dumps(slim, indent=2, sort_keys=True))
        return 0
    champ = report["champion"]
    print(f"registry {report['registry']}")
    print("champion: none" if champ is None else
          f"champion: {champ['version']} (date {champ['date']}, recall@20 {_fmt(champ['metrics'].get('recall@20'))}, "
          f"since {champ['since_utc']}: {champ['reason']})")
    print(f"{'version':<12}{'decision':<13}{'recall@20':>10}{'new-item':>10}{'churn':>8}{'+users':>8}{'+items':>8}  parent")
    for v in report["versions"]:
        m = v["metrics"]
        print(f"{v['version']:<12}{v['decision']:<13}{_fmt(m.get('recall@20')):>10}{_fmt(m.get('new_items_recall@20')):>10}"
              f"{_fmt(m.get('churn_overlap@20')):>8}{_fmt(v['new_users']):>8}{_fmt(v['new_items']):>8}  "
              f"{v['parent'] or '-'}")
    for d in report["dates"]:
        if d["version"] is None:
            print(f"{d['date']:<12}{d['decision']:<13}(no version: {d['reason']})")
    return 0


@_guard
def _rollback(args) -> int:
    from recgoat_dist.nightly.night import rollback
    outcome = rollback(args.registry, args.to)
    print(outcome.message)
    return outcome.exit_code


def register(subparsers) -> None:
    nightly = subparsers.add_parser("nightly", help="date-keyed incremental retraining with a gate")
    sub = nightly.add_subparsers(dest="action", required=True)
    for name, helptext in (("init", "register a base dataset, train it, promote it"),
                           ("run", "one date (or a range) of nightly retraining")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="YAML config (nightly.registry, nightly.delta, ...)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--registry", help="registry URL (overrides nightly.registry)")
        if name == "init":
            p.add_argument("--dataset", required=True, help="canonical dataset URL (recgoat prepare ...)")
            p.add_argument("--date", help="the base version's date (default: its latest timestamp's date)")
            p.set_defaults(func=_init)
        else:
            p.add_argument("--date", help="YYYY-MM-DD")
            p.add_argument("--dates", help="FROM..TO: each date in order, decided dates skipped")
            p.set_defaults(func=_run)
    registry = subparsers.add_parser("registry", help="inspect or roll back a nightly model registry")
    sub = registry.add_subparsers(dest="action", required=True)
    p = sub.add_parser("show", help="the champion and every version")
    p.add_argument("--registry", required=True)
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--lineage", action="store_true", help="include each version's lineage in --json")
    p.set_defaults(func=_show)
    p = sub.add_parser("rollback", help="point the champion at an earlier promoted version")
    p.add_argument("--registry", required=True)
    p.add_argument("--to", required=True, help="version to serve again")
    p.set_defaults(func=_rollback)
