"""The published OpenAPI document is valid and free of generator warnings, so clients can
generate code from /api/schema/ without surprises."""

import io

import pytest
import yaml
from django.core.management import call_command


@pytest.mark.django_db
def test_schema_validates_without_warnings():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = yaml.safe_load(out.getvalue())
    paths = schema["paths"]
    for path in (
        "/api/extensions/",
        "/api/extensions/{name}/",
        "/api/flavours/",
        "/api/flavours/{id}/builds/",
        "/api/builds/{id}/",
        "/api/builds/{id}/log",
        "/api/builds/{id}/cancel",
        "/api/auth/token/",
    ):
        assert path in paths, f"{path} missing from the OpenAPI document"
