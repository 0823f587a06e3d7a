"""A real S3 endpoint for tests: moto's server on 127.0.0.1, spoken to by boto3 over HTTP.

Never patch boto3 in-process: the point is to exercise the same HTTP requests (multipart
uploads, metadata, checksums) that a real S3-compatible server receives.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    region: str = "us-east-1"

    def session(self) -> boto3.session.Session:
        # Explicit fake credentials: never pick up a developer's real AWS profile.
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=self.region
        )

    def client(self) -> Any:
        return self.session().client("s3", endpoint_url=self.url)

    def new_bucket(self) -> str:
        name = f"bakehouse-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@contextmanager
def moto_s3_server() -> Iterator[S3Endpoint]:
    """Start moto's S3 server on a free port of 127.0.0.1 for the duration of the block."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Endpoint(url=f"http://{host}:{port}")
    finally:
        server.stop()
