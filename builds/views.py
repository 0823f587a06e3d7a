"""Pages and downloads of the builds app."""

from __future__ import annotations

from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from builds.adapters.store import ArtifactNotFound, ArtifactStoreError, get_artifact_store


@require_safe
def artifact_download(request: HttpRequest, key: str) -> HttpResponse:
    """``/artifacts/KEY``: published objects by plain GET, for nodes and systemd-sysupdate.

    No authentication: this is the public prefix that ``PUBLIC_BASE_URL`` points at by default,
    and sysupdate appends file names to it. Keys are checked by the store (no ``..``, no hidden
    segments), so nothing outside the published tree can be reached.
    """
    store = get_artifact_store()
    try:
        stored = store.stat(key)
        if stored is None:
            raise Http404("No such artifact.")
        stream = store.open(key)
    except (ArtifactNotFound, ArtifactStoreError) as exc:
        if isinstance(exc, ArtifactNotFound) or exc.code == "store.invalid-key":
            raise Http404("No such artifact.") from None
        # The store is down (S3 unreachable): a node should retry later, not see a server bug.
        return HttpResponse(exc.message, status=503, content_type="text/plain; charset=utf-8")
    response = FileResponse(stream, content_type=stored.content_type)
    response["Content-Length"] = str(stored.size)
    response["X-Content-Type-Options"] = "nosniff"
    # Published names are immutable except the listings, which change when a version is added.
    response["Cache-Control"] = (
        "no-cache" if key.rsplit("/", 1)[-1].startswith("SHA256SUMS") else "max-age=300"
    )
    return response
