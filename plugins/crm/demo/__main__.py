"""``python -m crm.demo``: the sandbox's command line (seed data, apply Airflow settings, run the SMTP sink).

Why one entry point: `make seed` and `make run` need these steps in a fresh venv with nothing but
PYTHONPATH=plugins. Each subcommand imports its module lazily, so one missing or broken piece
(e.g. the data generator) does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any


def _generator() -> Any:
    """crm.demo.generate, or a clear exit if that module is missing."""
    try:
        return importlib.import_module("crm.demo.generate")
    except ModuleNotFoundError as exc:
        if exc.name != "crm.demo.generate":
            raise
        sys.exit("python -m crm.demo seed: crm/demo/generate.py (the demo data generator) is not available")


def _seed(args: argparse.Namespace) -> int:
    return _generator().main(args) or 0


def _apply_settings(args: argparse.Namespace) -> int:
    from crm.demo.settings import apply_settings

    for name, outcome in apply_settings(args.file).items():
        print(f"{name}: {outcome}")
    return 0


def _smtp_sink(args: argparse.Namespace) -> int:
    from crm.demo import smtp_sink

    return smtp_sink.main(args)


def _rd_conversas(args: argparse.Namespace) -> int:
    from crm.demo import rd_conversas

    return rd_conversas.main(args)


def _sms_gateway(args: argparse.Namespace) -> int:
    from crm.demo import sms_gateway

    return sms_gateway.main(args)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI parser; only the chosen subcommand's module is imported to add its options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m crm.demo", description="Sandbox tools: demo data, Airflow settings, SMTP sink."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seed = sub.add_parser("seed", help="write the demo databases var/crm.db, var/erp.db, var/gp.db")
    if argv[:1] == ["seed"]:
        _generator().add_arguments(seed)
    seed.set_defaults(func=_seed)

    apply = sub.add_parser("apply-settings", help="upsert airflow_settings.yaml into the Airflow metadata DB")
    from crm.demo.settings import DEFAULT_FILE

    apply.add_argument("--file", default=str(DEFAULT_FILE), help="Astro-format settings file (default %(default)s)")
    apply.set_defaults(func=_apply_settings)

    sink = sub.add_parser("smtp-sink", help="run the sandbox SMTP server that stores every message as .eml")
    if argv[:1] == ["smtp-sink"]:
        from crm.demo import smtp_sink

        smtp_sink.add_arguments(sink)
    sink.set_defaults(func=_smtp_sink)

    rd = sub.add_parser("rd-conversas", help="run the sandbox RD Conversas (WhatsApp) API on loopback")
    if argv[:1] == ["rd-conversas"]:
        from crm.demo import rd_conversas

        rd_conversas.add_arguments(rd)
    rd.set_defaults(func=_rd_conversas)

    sms = sub.add_parser("sms-gateway", help="run the sandbox SMS gateway (HTTP) that records every SMS")
    if argv[:1] == ["sms-gateway"]:
        from crm.demo import sms_gateway

        sms_gateway.add_arguments(sms)
    sms.set_defaults(func=_sms_gateway)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status."""
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


# Guarded by the package name too: Airflow's plugin loader execs every .py under plugins/ as a
# top-level module, which would make this file run as "__main__" inside the scheduler
# (plugins/.airflowignore excludes crm/, this is the second fence).
if __name__ == "__main__" and __package__ == "crm.demo":
    sys.exit(main())
