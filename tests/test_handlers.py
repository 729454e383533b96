"""The kopf edge: what is registered for which settings, and how the one Secret watch
is routed to API accounts, targets and copies."""

from __future__ import annotations

import inspect
from typing import Any

import kopf
import pytest

from itcare_operator.handlers import NoDiffBase, SecretRouter, register
from itcare_operator.metrics import Metrics
from itcare_operator.settings import Settings
from itcare_operator.source_secret import SOURCE_LABEL
from itcare_operator.target_secret import CLUSTER_CREDENTIAL_LABEL, MANAGED_BY, MANAGED_BY_LABEL


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


def secret(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "labels": labels}}


ACCOUNT = {SOURCE_LABEL: "true"}
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}


def router(
    require_label: bool = True, cluster: bool = False
) -> tuple[SecretRouter, Recorder, Recorder | None]:
    controller, copies = Recorder(), Recorder() if cluster else None
    settings = Settings(require_source_label=require_label)
    return SecretRouter(settings, controller, copies), controller, copies  # type: ignore[arg-type]


def test_api_accounts_and_targets_go_where_a_label_selected_watch_would_send_them() -> None:
    route, controller, _ = router()
    route(None, secret("account", **ACCOUNT))
    route(None, secret("token", **MANAGED))
    route("ADDED", secret("unrelated", app="x"))
    assert controller.calls == [
        ("source_secret_event", None, "account"),
        ("target_secret_event", None, "token"),
    ]


def test_a_secret_that_loses_its_label_reads_as_deleted() -> None:
    """As a label-selected watch reports it: else a revoked API account would still
    be read, and a target stripped of its label would never be repaired."""
    route, controller, _ = router()
    route(None, secret("account", **ACCOUNT))
    route(None, secret("token", **MANAGED))
    controller.calls.clear()
    route("MODIFIED", secret("account"))
    route("MODIFIED", secret("token"))
    route("MODIFIED", secret("token"))  # once gone, it is unrelated
    assert controller.calls == [
        ("source_secret_event", "DELETED", "account"),
        ("target_secret_event", "DELETED", "token"),
    ]


def test_without_the_label_requirement_every_secret_may_be_an_api_account() -> None:
    route, controller, _ = router(require_label=False)
    route(None, secret("plain"))
    route("DELETED", secret("plain"))
    assert controller.calls == [
        ("source_secret_event", None, "plain"),
        ("source_secret_event", "DELETED", "plain"),
    ]


def test_copies_go_to_the_cluster_kind_and_api_accounts_to_both() -> None:
    route, controller, copies = router(cluster=True)
    assert copies is not None
    route(None, secret("copy", **MANAGED, **{CLUSTER_CREDENTIAL_LABEL: "org"}))
    route(None, secret("account", **ACCOUNT))
    assert controller.calls == [("source_secret_event", None, "account")]
    assert copies.calls == [
        ("copy_event", None, "copy"),
        ("source_secret_event", None, "account"),
    ]


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.controller = Recorder()
        self.cluster = Recorder() if settings.cluster_credentials else None
        self.route = SecretRouter(settings, self.controller, self.cluster)  # type: ignore[arg-type]


def watched(registry: kopf.OperatorRegistry) -> set[str]:
    handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers()]
    return {str(h.selector.any_name) for h in handlers if h.selector is not None}


@pytest.mark.parametrize(
    ("cluster", "kinds"),
    [
        (False, {"secrets", "itcarecredentials"}),
        (True, {"secrets", "itcarecredentials", "clusteritcarecredentials", "namespaces"}),
    ],
)
def test_only_what_the_settings_call_for_is_watched(cluster: bool, kinds: set[str]) -> None:
    """Without --cluster-credentials the operator has no RBAC for Namespaces or the
    cluster kind: kopf must not list them."""
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
