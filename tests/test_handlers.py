"""The kopf edge: what is registered for which settings (Secrets are not kopf's: see
test_secret_watch.py)."""

from __future__ import annotations

import inspect
from typing import Any

import kopf
import pytest

from itcare_operator.handlers import NoDiffBase, register
from itcare_operator.metrics import Metrics
from itcare_operator.settings import Settings


class Recorder:
    """Stands for the controllers: records what reached which entry point."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self.sources: dict[tuple[str, str], Any] = {}

    def __getattr__(self, entry: str) -> Any:
        def record(type_: str | None, obj: dict[str, Any]) -> None:
            self.calls.append((entry, type_, obj["metadata"]["name"]))
            if entry == "source_secret_event":
                where = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                if type_ == "DELETED":
                    self.sources.pop(where, None)
                else:
                    self.sources[where] = obj

        return record


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.controller = Recorder()
        self.cluster = Recorder() if settings.cluster_credentials else None


def watched(registry: kopf.OperatorRegistry) -> set[str]:
    handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]
    return {str(h.selector.any_name) for h in handlers if h.selector is not None}


@pytest.mark.parametrize(
    ("cluster", "kinds"),
    [
        (False, {"itcarecredentials"}),
        (True, {"itcarecredentials", "clusteritcarecredentials", "namespaces"}),
    ],
)
def test_only_what_the_settings_call_for_is_watched(cluster: bool, kinds: set[str]) -> None:
    """Without --cluster-credentials the operator has no RBAC for Namespaces or the
    cluster kind: kopf must not list them. Secrets are never kopf's: it cannot select
    them server-side."""
    registry = kopf.OperatorRegistry()
    register(registry, Runtime(Settings(cluster_credentials=cluster)))  # type: ignore[arg-type]
    assert watched(registry) == kinds


def test_every_resource_handler_is_a_coroutine() -> None:
    """kopf runs plain functions in worker threads; the core is not thread-safe."""
    registry = kopf.OperatorRegistry()
    register(registry, Runtime(Settings(cluster_credentials=True)))  # type: ignore[arg-type]
    handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]
    assert handlers and all(inspect.iscoroutinefunction(h.fn) for h in handlers)


async def test_start_up_settings_keep_kopf_light() -> None:
    """What kopf is told at start-up: no Events, no diff bases, listing in pages, and
    per-object workers that do not outlive their last event by seconds (each holds
    the object's last body: at 10,000 credentials, thousands of them)."""
    started: list[bool] = []

    class Started(Runtime):
        async def start_background(self) -> None:
            started.append(True)

    registry = kopf.OperatorRegistry()
    register(registry, Started(Settings()))  # type: ignore[arg-type]
    startup = [h for h in registry._activities.get_all_handlers() if h.id.endswith("startup")]
    settings = kopf.OperatorSettings()
    await startup[0].fn(settings=settings)
    assert started == [True]
    assert settings.posting.enabled is False
    assert settings.watching.chunk_size == 500
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)
    assert settings.queueing.idle_timeout <= 1.0
    assert settings.peering.standalone is True
