"""Telemetry's decisions that need no server: when tracing is on, and bounded labels."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from runplane.server.config import ServerConfig
from runplane.server.records import QueueCount, RunCount, RunStatus
from runplane.server.telemetry import Telemetry, tracing
from runplane.server.telemetry.metrics import (
    MAX_NAMESPACES,
    OTHER,
    FoldedLabels,
    Queue,
    QueueGauges,
    fold_queues,
)


@pytest.mark.parametrize(
    ("flag", "environ", "on"),
    [
        ("", {}, False),
        ("http://127.0.0.1:4317", {}, True),
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ("", {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ("", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ("", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ("http://127.0.0.1:4317", {"OTEL_SDK_DISABLED": "true"}, True),
        ("", {"OTEL_SERVICE_NAME": "runplane-eu"}, False),
    ],
)
def test_tracing_is_on_only_when_asked_for(flag: str, environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(flag, environ) is on


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http"},
    ],
)
def test_unsupported_exporters_are_refused_with_a_reason(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="not supported"):
        tracing.tracer_provider("", environ)


def test_everything_off_installs_no_interceptor() -> None:
    telemetry = Telemetry.configure(ServerConfig(), environ={})
    assert telemetry.metrics is None
    assert telemetry.tracer_provider is None
    assert telemetry.interceptors() == []
    assert telemetry.swept is None


def test_each_switch_installs_the_one_observer() -> None:
    for config in (ServerConfig(access_log=True), ServerConfig(metrics_address="127.0.0.1:0")):
        assert len(Telemetry.configure(config, environ={}).interceptors()) == 1


def test_labels_beyond_the_limit_fold_into_other() -> None:
    registry = CollectorRegistry()
    counter = Counter("folded_total", "test", ("namespace", "status"), registry=registry)
    labels = FoldedLabels(counter, limit=2)
    for namespace in ("a", "b", "c", "d", "a"):
        labels(namespace, "pending").inc()
    labels("b", "running").inc()
    text = generate_latest(registry).decode()
    assert 'folded_total{namespace="a",status="pending"} 2.0' in text
    assert 'folded_total{namespace="b",status="pending"} 1.0' in text
    assert 'folded_total{namespace="b",status="running"} 1.0' in text
    assert f'folded_total{{namespace="{OTHER}",status="pending"}} 2.0' in text
    assert 'namespace="c"' not in text


def test_queues_beyond_the_top_fold_into_other_per_namespace() -> None:
    queues = [
        Queue("shop", "deep", 50, 3.0),
        Queue("shop", "mid", 20, 9.0),
        Queue("shop", "small", 5, 30.0),
        Queue("shop", "tiny", 1, 60.0),
        Queue("lab", "only", 2, 1.0),
    ]
    assert fold_queues(queues, top=2) == [
        Queue("shop", "deep", 50, 3.0),
        Queue("shop", "mid", 20, 9.0),
        Queue("shop", OTHER, 6, 60.0),
        Queue("lab", "only", 2, 1.0),
    ]
    assert fold_queues(queues, top=10) == sorted(
        queues, key=lambda q: (q.namespace != "shop", -q.depth)
    )


def test_queue_gauges_fold_namespaces_beyond_the_limit_into_other() -> None:
    now = 100 * 10**6
    names = [f"ns-{index:03}" for index in range(MAX_NAMESPACES + 2)]
    gauges = QueueGauges(max_assistants=5)
    gauges.update(
        [QueueCount(name, "a", 1, now - index * 10**6) for index, name in enumerate(names)],
        [RunCount(name, RunStatus.PENDING, 2) for name in names],
        now,
    )
    samples = {
        (sample.name, tuple(sorted(sample.labels.values()))): sample.value
        for family in gauges.collect()
        for sample in family.samples
    }
    depths = {key: value for key, value in samples.items() if key[0] == "runplane_queue_depth"}
    assert len(depths) == MAX_NAMESPACES + 1
    assert depths["runplane_queue_depth", ("a", names[0])] == 1
    assert depths["runplane_queue_depth", ("a", OTHER)] == 2  # the last two namespaces
    oldest = samples["runplane_queue_oldest_age_seconds", ("a", OTHER)]
    assert oldest == MAX_NAMESPACES + 1  # the older of the two
    assert samples["runplane_runs", (OTHER, "pending")] == 4
    assert samples["runplane_runs", (OTHER, "running")] == 0
    assert samples["runplane_runs", (names[-3], "pending")] == 2
