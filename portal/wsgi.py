import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_application = get_wsgi_application()

from django.urls import get_resolver  # noqa: E402 - after Django is set up

from portal.read_cache import serve_cached_reads  # noqa: E402

# Load the URLconf, and with it every view, while the worker starts: otherwise the first client of
# each freshly started worker waits a tenth of a second for those imports.
get_resolver().url_patterns  # noqa: B018 - evaluated for its side effect

# A repeated API read is answered from the cache before Django builds a request (portal.read_cache).
application = serve_cached_reads(django_application)
