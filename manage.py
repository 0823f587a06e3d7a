#!/usr/bin/env python3
"""Django's command-line utility for Bakehouse."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from django.core.management import execute_from_command_line

    from portal.config import ConfigError

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        # A wrong environment value: say which variable, without a traceback.
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
