"""What runplane tells its operators: Prometheus metrics, OpenTelemetry traces, access logs.

- `metrics`: every series, on a registry of the server's own, and the `/metrics` endpoint;
- `calls`: the one interceptor that counts, times, traces and logs each RPC;
- `tracing`: whether tracing is on (flag or `OTEL_*` variables) and its tracer provider.

All of it is off by default, and then costs nothing: no interceptor is installed and no
store seam is listened to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from opentelemetry.sdk.trace import TracerProvider

from runplane.server.config import ServerConfig
from runplane.server.periodic import PeriodicTask
from runplane.server.stats import StatsService
from runplane.server.store.database import Database
from runplane.server.sweeper import SweepListener
from runplane.server.telemetry import tracing
from runplane.server.telemetry.calls import CallObserver, Principal, anonymous
from runplane.server.telemetry.metrics import Metrics, MetricsEndpoint
from runplane.server.watch.compaction import Compactor
from runplane.server.watch.hub import WatchHub


@dataclass
class Telemetry:
    """The server's telemetry as its configuration asks: built before the database (which
    times its transactions into it), attached to the rest once they exist."""

    metrics: Metrics | None
    tracer_provider: TracerProvider | None
    log_calls: bool
    endpoint: MetricsEndpoint | None = None

    @classmethod
    def configure(cls, config: ServerConfig, environ: Mapping[str, str] = os.environ) -> Telemetry:
        return cls(
            metrics=(
                Metrics(max_assistants=config.metrics_max_assistants)
                if config.metrics_address
                else None
            ),
            tracer_provider=tracing.tracer_provider(config.otlp_endpoint, environ),
            log_calls=config.access_log,
        )

    def interceptors(
        self, principal: Principal = anonymous
    ) -> list[grpc.aio.ServerInterceptor[object, object]]:
        """The call observer, when anything is on: it must come first among the server's
        interceptors, so that calls they refuse are counted, traced and logged too.
        `principal` names a call's caller in the access log."""
        if self.metrics is None and self.tracer_provider is None and not self.log_calls:
            return []
        tracer = (
            None if self.tracer_provider is None else self.tracer_provider.get_tracer("runplane")
        )
        return [
            CallObserver(
                metrics=self.metrics, tracer=tracer, log_calls=self.log_calls, principal=principal
            )
        ]

    @property
    def swept(self) -> SweepListener | None:
        return None if self.metrics is None else self.metrics.swept

    def attach(self, database: Database, hub: WatchHub, compactor: Compactor) -> None:
        """Listen to the store's commits, read the hub and the compactor at scrape time."""
        if self.metrics is None:
            return
        database.on_commit(self.metrics.committed)
        self.metrics.watch_streams.set_function(lambda: hub.watcher_count)
        self.metrics.store_revision.set_function(lambda: hub.known)
        self.metrics.compact_revision.set_function(lambda: compactor.compact_revision)

    def watch_queues(self, stats: StatsService, interval: float) -> PeriodicTask | None:
        """The task that reads the queue and run gauges from the database every
        `interval` seconds (the first read as soon as it starts), when metrics are on."""
        metrics = self.metrics
        if metrics is None:
            return None

        async def read() -> None:
            figures = await stats.read(None)
            metrics.queues.update(figures.queues, figures.runs, figures.read_at)

        task = PeriodicTask("queue-gauges", read, interval=interval)
        task.wake()
        return task

    def serve(self, metrics_address: str) -> None:
        """Start serving `/metrics` (when metrics are on)."""
        if self.metrics is not None:
            self.endpoint = MetricsEndpoint(self.metrics.registry, metrics_address)

    def described(self) -> dict[str, str]:
        """What the readiness line says about it."""
        described = {}
        if self.endpoint is not None:
            described["metrics"] = self.endpoint.address
        if self.tracer_provider is not None:
            described["tracing"] = "otlp"
        return described

    def close(self) -> None:
        """Stop serving `/metrics` and send the spans still buffered (blocking)."""
        if self.endpoint is not None:
            self.endpoint.close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
