"""Whether the server traces, and the OpenTelemetry tracer provider that exports its spans.

Tracing is off unless asked for, by `--otlp-endpoint` or by the standard variables:
`OTEL_TRACES_EXPORTER=otlp`, or an `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. `OTEL_SDK_DISABLED=true` and
`OTEL_TRACES_EXPORTER=none` keep it off (the flag still wins). Everything else the SDK
reads from the environment as usual: sampler, resource attributes, exporter headers,
certificates, timeouts. Spans leave over OTLP/gRPC, in batches, from a thread of the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def wanted(otlp_endpoint: str, environ: Mapping[str, str]) -> bool:
    """Whether to trace, by the flag and the standard variables (see the module doc)."""
    if otlp_endpoint:
        return True
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {
        name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
    } - {""}
    if exporters:
        unknown = exporters - {"otlp", "none"}
        if unknown:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={','.join(sorted(unknown))} is not supported: "
                "runplane exports traces with otlp (or none)"
            )
        return "otlp" in exporters
    return any(environ.get(name) for name in _ENDPOINTS)


def tracer_provider(otlp_endpoint: str, environ: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting over OTLP/gRPC to `otlp_endpoint` (empty: the OTEL_* endpoint,
    else the SDK's default), or None when tracing is off."""
    if not wanted(otlp_endpoint, environ):
        return None
    for name in _PROTOCOLS:
        protocol = environ.get(name, "grpc").strip().lower()
        if protocol != "grpc":
            raise ValueError(f"{name}={protocol} is not supported: runplane exports OTLP over gRPC")
    # The service's own name and version, unless OTEL_SERVICE_NAME or
    # OTEL_RESOURCE_ATTRIBUTES say otherwise (the detector's values win the merge).
    resource = Resource.create(
        {SERVICE_NAME: "runplane", SERVICE_VERSION: metadata.version("runplane")}
    ).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint or None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
