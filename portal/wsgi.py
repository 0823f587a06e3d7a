import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_application = get_wsgi_application()

from portal.read_cache import serve_cached_reads  # noqa: E402 - needs Django set up

# A repeated API read is answered from the cache before Django builds a request (portal.read_cache).
application = serve_cached_reads(django_application)
