"""The one redactor masks credentials an endpoint echoes, even ones never registered."""

from __future__ import annotations

import pytest

from orchestrator.secrets.redact import redact_text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "HTTP 500 echo Authorization: PVEAPIToken=root@pam!ci=0b7c-11aa more",
            "HTTP 500 echo Authorization: PVEAPIToken=root@pam!ci=*** more",
        ),
        (
            "{'Authorization': 'Bearer eyJhbGciOi.x.y', 'Accept': 'json'}",
            "{'Authorization': '***', 'Accept': 'json'}",
        ),
        ("proxy-authorization: Basic dXNlcjpwYXNz", "proxy-authorization: ***"),
        ("postgresql+psycopg://orch:hunter22@db/orch", "postgresql+psycopg://orch:***@db/orch"),
        ("no authorization needed for this step", "no authorization needed for this step"),
    ],
)
def test_echoed_credentials_are_masked(text: str, shown: str) -> None:
    assert redact_text(text) == shown
