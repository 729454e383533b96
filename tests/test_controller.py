"""The controller's service tests are in ``tests/test_service_*.py``, over the in-memory
API server of :mod:`tests.fake_kube`. This module keeps the names other unit modules
import from it."""

from __future__ import annotations

from tests.fake_kube import URL, Clock, FakeKube, token_handler

__all__ = ["URL", "Clock", "FakeKube", "token_handler"]
