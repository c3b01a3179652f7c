"""``manage.py homing COMMAND``: the operator's ``homing`` command, on Django's settings.

``plan``, ``provision`` and ``check`` (Pub/Sub resources), ``quarantine list|show|replay|purge``
and ``catalog`` run :mod:`homing.cli` with ``settings.HOMING`` written into the environment
and the configured service as ``--app``; ``outbox flush`` drains Django's outbox
(:func:`homing.django.outbox.flush`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

import homing.django.config as config
from homing.errors import HomingError

#: Commands that load the service (they take ``--app``).
_LOADING = ("quarantine", "catalog")
_APP = "homing.django:service"


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "homing's operator commands on this project's settings: plan, provision, check, "
        "quarantine, catalog, outbox flush (`manage.py homing COMMAND --help`)"
    )

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after `homing` is the homing command's own: parsed by homing.cli.
        code = self.execute_homing(argv[2:])
        if code:
            sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:  # call_command("homing", ...)
        code = self.execute_homing(list(args))
        if code:
            raise CommandError(f"homing {' '.join(args)} exited {code}")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs="*")

    def execute_homing(self, argv: list[str]) -> int:
        import homing.cli as cli

        if argv[:2] == ["outbox", "flush"]:
            return self._flush(argv[2:])
        if argv and argv[0] in _LOADING and "--app" not in argv and "-h" not in argv:
            argv = [*argv, "--app", _APP]
        try:
            environment = config.environment()
        except HomingError as exc:
            self.stderr.write(f"homing: error: {exc}")
            return 2
        saved = dict(os.environ)
        os.environ.update(environment)
        try:
            return cli.main(argv)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def _flush(self, argv: list[str]) -> int:
        import argparse

        from homing.django import outbox

        parser = argparse.ArgumentParser(prog="manage.py homing outbox flush")
        parser.add_argument("--limit", type=int, default=500)
        args = parser.parse_args(argv)
        try:
            report = outbox.flush(limit=args.limit)
            waiting = outbox.count()
        except HomingError as exc:
            self.stderr.write(f"homing: error: {exc}")
            return 2
        self.stdout.write(
            f"published {report.published}, failed {report.failed}, still waiting {waiting}"
        )
        for error in report.errors[:10]:
            self.stdout.write(f"  {error}")
        return 1 if report.failed else 0
