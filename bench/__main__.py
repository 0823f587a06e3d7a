"""``python -m bench`` (``make bench``): the whole product's table, see bench/portal.py."""

import sys

from bench.portal import main

sys.exit(main())
