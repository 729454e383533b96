"""Shared fixtures. The real-environment fixtures live in ``tests/testenv.py``."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.keycloak_fake import FakeKeycloak

pytest_plugins = ["tests.testenv"]

CLIENT_ID = "itcare-api-team-a"
CLIENT_SECRET = "s3cr3t-0f-team-a+/="


@pytest.fixture
def keycloak() -> Iterator[FakeKeycloak]:
    """The small Keycloak-compatible server, plain HTTP on loopback, one client."""
    with FakeKeycloak() as server:
        server.add_client(CLIENT_ID, CLIENT_SECRET)
        yield server


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(test_ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def keycloak_tls(test_ca: trustme.CA) -> Iterator[FakeKeycloak]:
    """The same server over HTTPS, with a certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    test_ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    with FakeKeycloak(tls=context) as server:
        server.add_client(CLIENT_ID, CLIENT_SECRET)
        yield server
