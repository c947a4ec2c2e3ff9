"""Metric children per route and tenant, error kinds and the exposition format."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from gatekeeper import metrics


def sample(name: str, **labels: str) -> float:
    metrics.fold()
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("status", "expected"), [
    (101, "1xx"), (200, "2xx"), (304, "3xx"), (402, "4xx"), (499, "4xx"), (503, "5xx"),
    (600, "5xx"), (0, "5xx"),
])
def test_status_class(status: int, expected: str) -> None:
    assert metrics.status_class(status) == expected


def test_route_children_reused() -> None:
    assert metrics.for_route("unit-a") is metrics.for_route("unit-a")


def test_unmatched_route_label() -> None:
    assert metrics.for_route(None).name == metrics.UNMATCHED


@pytest.mark.parametrize("status", [200, 402, 503])
def test_response_counted_once(status: int) -> None:
    label = metrics.status_class(status)
    before = sample("gatekeeper_requests_total", route="unit-b", status_class=label)
    metrics.for_route("unit-b").count_response(status)
    after = sample("gatekeeper_requests_total", route="unit-b", status_class=label)
    assert after - before == 1


def test_tenant_response_counted() -> None:
    before = sample("gatekeeper_tenant_requests_total", tenant="acme", route="unit-c",
                    status_class="2xx")
    metrics.for_tenant("acme", "unit-c").count_response(204)
    after = sample("gatekeeper_tenant_requests_total", tenant="acme", route="unit-c",
                   status_class="2xx")
    assert after - before == 1


def test_render_text_format() -> None:
    body, content_type = metrics.render("text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE gatekeeper_requests_total counter" in body


def test_render_openmetrics() -> None:
    _body, content_type = metrics.render("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")


def test_buffered_count_waits_for_fold() -> None:
    before = sample("gatekeeper_tickets_charged_total", route="unit-d")
    metrics.for_route("unit-d").charged.inc(3)
    unfolded = REGISTRY.get_sample_value("gatekeeper_tickets_charged_total", {"route": "unit-d"})
    assert (unfolded or 0.0) == before
    assert sample("gatekeeper_tickets_charged_total", route="unit-d") - before == 3


def test_buffered_histogram_matches_observe() -> None:
    amounts = (0.0001, 0.005, 0.0051, 0.3, 1.0, 75.0, 0.01)
    for amount in amounts:
        metrics.for_route("unit-e").upstream_seconds.observe(amount)
        metrics.UPSTREAM_SECONDS.labels("unit-f").observe(amount)
    metrics.fold()
    for bound in (*metrics.UPSTREAM_BUCKETS_S, float("inf")):
        le = "+Inf" if bound == float("inf") else str(bound)
        buffered = sample("gatekeeper_upstream_duration_seconds_bucket", route="unit-e", le=le)
        direct = sample("gatekeeper_upstream_duration_seconds_bucket", route="unit-f", le=le)
        assert buffered == direct, le
    assert sample("gatekeeper_upstream_duration_seconds_sum", route="unit-e") == sum(amounts)
    assert sample("gatekeeper_upstream_duration_seconds_count", route="unit-e") == len(amounts)
