"""A publisher that SIGKILLs itself right after writing one chosen key (run as a child process).

``python -m tests.builds.publish_child SPEC_JSON``: SPEC has ``store`` (``{"local": ROOT}`` or
``{"s3": URL, "bucket": NAME}``), ``key`` (the signing key file), ``kind`` (``extension`` or
``flavour``), ``name``, ``version``/``arch``/``image`` for an extension, and ``kill_after``: the
store key whose write is the last thing this process does. The kill is real (SIGKILL, no cleanup,
no ``finally``), the way the kernel's OOM killer or a node losing power stops a worker.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def killing_store(store: Any, kill_after: str) -> Any:
    """``store`` whose class kills the process once ``kill_after`` is written."""

    class Killing(type(store)):  # type: ignore[misc]
        def _write_file(self, key: str, path: Path, **kwargs: Any) -> None:
            super()._write_file(key, path, **kwargs)
            if key == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        def _write_bytes(self, key: str, data: bytes, **kwargs: Any) -> None:
            super()._write_bytes(key, data, **kwargs)
            if key == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    store.__class__ = Killing
    return store


def main(spec: dict[str, Any]) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()
    from builds.adapters.store import LocalArtifactStore, S3ArtifactStore
    from builds.pipeline.signing import GpgSigner
    from builds.publication import ImageFile, publish_extension, publish_flavour

    public = "https://sysext.example.com/"
    if "local" in spec["store"]:
        store: Any = LocalArtifactStore(spec["store"]["local"], public_base_url=public)
    else:
        import boto3

        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        store = S3ArtifactStore(
            spec["store"]["bucket"], public_base_url=public, endpoint_url=spec["store"]["s3"], session=session
        )
    killing_store(store, spec["kill_after"])
    with GpgSigner(Path(spec["key"])) as signer:
        if spec["kind"] == "extension":
            image = ImageFile(spec["version"], spec["arch"], Path(spec["image"]))
            publish_extension(store, signer, spec["name"], [image])
        else:
            publish_flavour(store, signer, spec["name"], {"config.bu": spec["config"].encode()})
    sys.exit(3)  # the kill point was never reached: the test's plan is wrong


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
