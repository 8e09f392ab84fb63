"""`rftloop forget --user U`: erase one person (their rows, their samples from later training, the
versions trained on them; see infra/erasure.py) and print what was done and what Kafka still holds."""

from __future__ import annotations

import argparse
import getpass
import sys

from infra.erasure import forget
from infra.settings import (
    ClickHouseSettings,
    KafkaSettings,
    PrivacySettings,
    RegistrySettings,
    load_or_explain,
)
from schemas.events import TaintPolicy


def add_parser(sub: argparse._SubParsersAction) -> None:
    help = "erase one user: their rows, their samples from later runs, the versions trained on them"
    p = sub.add_parser("forget", help=help, description=help)
    p.add_argument("--user", required=True, help="the user_id the events carry")
    p.add_argument("--reason", help="e.g. the erasure request's ticket; recorded on privacy.erasures")
    p.add_argument(
        "--policy",
        choices=[x.value for x in TaintPolicy],
        help="retire (roll tainted versions back now) or retrain; default RFTLOOP_PRIVACY_TAINTED_POLICY",
    )
    p.add_argument("--dry-run", action="store_true", help="find and report; change nothing")
    p.add_argument("--json", action="store_true", help="print the erasure event as JSON")
    p.set_defaults(fn=cmd_forget)


def cmd_forget(args: argparse.Namespace) -> int:
    privacy: PrivacySettings = load_or_explain(PrivacySettings)  # type: ignore[assignment]
    report = forget(
        args.user,
        kafka=load_or_explain(KafkaSettings),  # type: ignore[arg-type]
        registry=load_or_explain(RegistrySettings),  # type: ignore[arg-type]
        clickhouse=load_or_explain(ClickHouseSettings),  # type: ignore[arg-type]
        policy=TaintPolicy(args.policy) if args.policy else privacy.tainted_policy,
        actor=f"cli:{getpass.getuser()}",
        reason=args.reason,
        topic_suffix=privacy.topic_suffix,
        dry_run=args.dry_run,
        say=lambda m: print(f"... {m}", file=sys.stderr),
    )
    if args.json:
        print(report.event.model_dump_json(indent=1))
    else:
        print("\n".join(report.lines()))
    return 0
