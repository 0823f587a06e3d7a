"""``manage.py sync_catalog``: load the built-in recipes into the global catalog (idempotent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog.services import BUILTIN_RECIPES_DIR, CatalogSyncError, catalog_sync


class Command(BaseCommand):
    help = "Load catalog/recipes/*.yaml into the database; reports added/updated/unchanged extensions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--recipes-dir", type=Path, default=BUILTIN_RECIPES_DIR, help="directory of *.yaml recipes"
        )

    def handle(self, *args: Any, recipes_dir: Path, **options: Any) -> None:
        if not recipes_dir.is_dir():
            raise CommandError(f"{recipes_dir} is not a directory of recipes")
        try:
            report = catalog_sync(recipes_dir=recipes_dir)
        except CatalogSyncError as exc:
            for path, reason in exc.errors:
                self.stderr.write(f"{path}: {reason}")
            raise CommandError(
                f"{len(exc.errors)} recipe file(s) did not load; nothing was written."
            ) from None
        if options.get("verbosity", 1) < 1:
            return
        for outcome in ("added", "updated", "unchanged"):
            names = getattr(report, outcome)
            if names and outcome != "unchanged":
                self.stdout.write(f"{outcome}: {', '.join(names)}")
        self.stdout.write(
            f"catalog sync: {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged"
        )
