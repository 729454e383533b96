"""The refresh counters' label values, read from the registry as a scrape sees them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from itcare_operator.metrics import CLUSTER, Metrics


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def test_refresh_counter_labels_result_and_grant_apart() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.refreshed("team-a", "billing", "ClientCredentials")
    metrics.refreshed("team-a", "billing", "ClientCredentials")
    metrics.failed("team-a", "billing", "ClientCredentials", "InvalidClient")
    metrics.refreshed("", "shared", "RefreshToken", scope=CLUSTER)
    one = {"namespace": "team-a", "name": "billing", "scope": "namespaced"}
    assert samples(metrics.registry, "itcare_token_refresh_total") == {
        labels(**one, result="success", grant="ClientCredentials"): 2.0,
        labels(**one, result="failure", grant="ClientCredentials"): 1.0,
        labels(
            namespace="", name="shared", scope="cluster", result="success", grant="RefreshToken"
        ): 1.0,
    }
    assert samples(metrics.registry, "itcare_token_refresh_errors_total") == {
        labels(**one, reason="InvalidClient"): 1.0
    }
    # As the alerts and the dashboard query it.
    success = {**one, "result": "success", "grant": "ClientCredentials"}
    assert metrics.registry.get_sample_value("itcare_token_refresh_total", success) == 2.0
