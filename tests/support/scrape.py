"""Reading a server's Prometheus metrics the way Prometheus does: GET /metrics, parse the
text format (with prometheus_client's own parser)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a series not created yet (a counter that never counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(samples: Samples, name: str, method: str, **labels: str) -> float:
    """A grpc_server_* sample of a RunService method."""
    service = "runplane.v1.RunService"
    kind = "server_stream" if method.startswith("Watch") else "unary"
    return value(samples, name, grpc_service=service, grpc_method=method, grpc_type=kind, **labels)
