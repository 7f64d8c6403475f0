"""Every Prometheus series runplane serves, on a registry of the server's own.

The gRPC series carry grpc-ecosystem's names, labels and code spellings (`OK`,
`FailedPrecondition`...), so dashboards and alert rules written for Go services apply
unchanged. The domain series are fed from seams, never from the rules:

- the commit listener (`Database.on_commit`) sees every committed change of this process,
  so run transitions, run durations and claim waits are derived there;
- the database times its transactions (`TransactionTimer`), the sweeper reports each pass;
- the watch hub and the compactor are read when Prometheus scrapes;
- the queue and inflight-run gauges hold the figures last read from the database (on a
  timer, not per scrape: `QueueGauges`), so every replica reports the same global values.

Label children are created once and kept: `labels()` costs four times an `inc()`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from runplane.server.records import (
    INFLIGHT,
    Change,
    ChangeType,
    QueueCount,
    Run,
    RunCount,
    RunStatus,
)

# grpc-ecosystem's spelling of each status code (Go's codes.Code.String()).
GRPC_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# A unary call takes well under a millisecond: Prometheus' default buckets (from 5 ms)
# would put nearly all of them in the first one.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10)
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CLAIM_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 86400)

DEFAULT_MAX_ASSISTANTS = 50
"""Assistants per namespace whose queues keep their own series in the queue gauges."""
OTHER = "other"
"""The label value that stands for everything beyond a label's limit."""
DEFAULT_NAMESPACE = "default"
MAX_NAMESPACES = 256
"""Distinct namespace labels per series before the rest fold into `other`."""

SWEEP_OUTCOMES = {
    RunStatus.TIMEOUT: "timeout",
    RunStatus.PENDING: "requeued",
    RunStatus.ERROR: "failed",
}
"""What the sweeper did to a stuck run, by the status it left the run in."""


def _seconds(microseconds: int) -> float:
    return max(0.0, microseconds / 1e6)


def _namespace(run: Run) -> str:
    # Runs gain a namespace column with the multi-tenant store; until then every run
    # lives in the default namespace.
    return str(getattr(run, "namespace", DEFAULT_NAMESPACE))


class RpcSeries:
    """The grpc_server_* children of one method, created once."""

    __slots__ = ("_handled", "_labels", "_metrics", "latency", "received", "sent", "started")

    def __init__(self, metrics: Metrics, full_method: str, grpc_type: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self._metrics = metrics
        self._labels = (service, method, grpc_type)
        self.started = metrics.rpc_started.labels(*self._labels)
        self.received = metrics.rpc_received.labels(*self._labels)
        self.sent = metrics.rpc_sent.labels(*self._labels)
        self.latency = metrics.rpc_seconds.labels(*self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._metrics.rpc_handled.labels(*self._labels, GRPC_CODE_NAMES[code])
            self._handled[code] = child
        child.inc()


class FoldedLabels:
    """Children of a family by label values, the first `limit` values of the first label
    kept and the later ones folded into `other`."""

    def __init__(self, family: Any, limit: int) -> None:
        self._family = family
        self._limit = limit
        self._children: dict[tuple[str, ...], Any] = {}
        self._kept: set[str] = set()

    def __call__(self, first: str, *rest: str) -> Any:
        key = (first, *rest)
        child = self._children.get(key)
        if child is None:
            if first not in self._kept and len(self._kept) >= self._limit:
                first = OTHER
            else:
                self._kept.add(first)
            child = self._children[key] = self._family.labels(first, *rest)
        return child


class Metrics:
    """The server's series. Everything here may be called from any thread."""

    def __init__(self, max_assistants: int = DEFAULT_MAX_ASSISTANTS) -> None:
        # No `_created` twin of every series: Prometheus ignores it in the text format, and
        # it doubles what a scrape reads (a process-wide switch of prometheus_client).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        registry = self.registry

        rpc_labels = ("grpc_service", "grpc_method", "grpc_type")
        self.rpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            rpc_labels,
            registry=registry,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*rpc_labels, "grpc_code"),
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time to the response of unary RPCs and to the first message (or the status) "
            "of streaming RPCs.",
            rpc_labels,
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.rpc_received = Counter(
            "grpc_server_msg_received_total",
            "Messages received from clients.",
            rpc_labels,
            registry=registry,
        )
        self.rpc_sent = Counter(
            "grpc_server_msg_sent_total",
            "Messages sent to clients.",
            rpc_labels,
            registry=registry,
        )

        self._transitions = FoldedLabels(
            Counter(
                "runplane_run_transitions_total",
                "Runs entering a status (created in it, or changed to it) on this replica.",
                ("namespace", "status"),
                registry=registry,
            ),
            MAX_NAMESPACES,
        )
        run_duration = Histogram(
            "runplane_run_duration_seconds",
            "From a run's first claim to its end, by the status it ended in.",
            ("status",),
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self._run_durations = {
            status: run_duration.labels(status.value)
            for status in RunStatus
            if not status.is_inflight
        }
        self._claim_wait = Histogram(
            "runplane_claim_wait_seconds",
            "From when a run was due (created, start_after, or requeued) to its claim.",
            buckets=CLAIM_WAIT_BUCKETS,
            registry=registry,
        )
        sweeps = Counter(
            "runplane_sweeps_total",
            "Stuck runs the sweeper settled, by outcome (timeout, requeued, failed).",
            ("outcome",),
            registry=registry,
        )
        self._sweeps = {
            status: sweeps.labels(outcome) for status, outcome in SWEEP_OUTCOMES.items()
        }
        self._sweeper_success = Gauge(
            "runplane_sweeper_last_success_timestamp_seconds",
            "When the sweeper last completed a pass on this replica (Unix time).",
            registry=registry,
        )
        self.watch_streams = Gauge(
            "runplane_watch_streams",
            "Watch streams open on this replica.",
            registry=registry,
        )
        self.watch_events_sent = Counter(
            "runplane_watch_events_sent_total",
            "Run events sent on watch streams.",
            registry=registry,
        )
        self.store_revision = Gauge(
            "runplane_store_revision",
            "The newest store revision this replica knows committed.",
            registry=registry,
        )
        self.compact_revision = Gauge(
            "runplane_event_log_compact_revision",
            "Every event up to this revision was compacted out of the event log "
            "(as of this replica's last compaction round).",
            registry=registry,
        )
        transaction_seconds = Histogram(
            "runplane_db_transaction_seconds",
            "Database transactions: reads, and write groups from begin to commit.",
            ("kind",),
            buckets=DB_BUCKETS,
            registry=registry,
        )
        self._read_seconds = transaction_seconds.labels("read")
        self._write_seconds = transaction_seconds.labels("write")
        self._writer_cpu = Counter(
            "runplane_db_writer_cpu_seconds",
            "CPU time the writer thread ran during write groups; the rest of their time "
            "it waited, for the database or for the interpreter lock.",
            registry=registry,
        )
        self._group_size = Histogram(
            "runplane_db_group_commit_size",
            "Write transactions committed together in one database transaction.",
            buckets=GROUP_BUCKETS,
            registry=registry,
        )
        self.queues = QueueGauges(max_assistants)
        registry.register(self.queues)

    def rpc(self, full_method: str, grpc_type: str) -> RpcSeries:
        return RpcSeries(self, full_method, grpc_type)

    # -- seams of the store and the background tasks -------------------------------------

    def committed(self, changes: list[Change]) -> None:
        """`Database.on_commit` listener: every status change of this replica's commits."""
        for change in changes:
            run, before = change.run, change.previous
            if change.type is ChangeType.DELETED or (
                before is not None and before.status is run.status
            ):
                continue
            self._transitions(_namespace(run), run.status.value).inc()
            if before is None:
                continue
            if before.status is RunStatus.PENDING and run.status is RunStatus.RUNNING:
                self._claim_wait.observe(_seconds(run.updated_at - _due(before)))
            elif not run.status.is_inflight and run.started_at is not None:
                ended = run.ended_at if run.ended_at is not None else run.updated_at
                self._run_durations[run.status].observe(_seconds(ended - run.started_at))

    def swept(self, settled: list[Run]) -> None:
        """`Sweeper` listener: one completed pass and the runs it settled."""
        for run in settled:
            self._sweeps[run.status].inc()
        self._sweeper_success.set(time.time())

    def read(self, seconds: float) -> None:
        """`TransactionTimer`: one read transaction."""
        self._read_seconds.observe(seconds)

    def write(self, seconds: float, cpu_seconds: float, group_size: int) -> None:
        """`TransactionTimer`: one committed group of write transactions."""
        self._write_seconds.observe(seconds)
        self._writer_cpu.inc(cpu_seconds)
        self._group_size.observe(group_size)


def _due(pending: Run) -> int:
    """When a PENDING run became claimable: created (or requeued, for a later attempt),
    or its start_after if later."""
    since = pending.created_at if pending.attempt == 0 else pending.updated_at
    return max(since, pending.start_after or 0)


@dataclass(frozen=True, slots=True)
class Queue:
    """Claimable runs waiting for one assistant in one namespace."""

    namespace: str
    assistant_id: str
    depth: int
    oldest_age: float
    """Seconds the oldest of them has been due."""


def fold_queues(queues: Iterable[Queue], top: int) -> list[Queue]:
    """Bound the queue gauges' cardinality: per namespace, the `top` deepest queues keep
    their assistant id and the others are summed into one `other` queue (its oldest age
    the oldest among them), so any number of assistants makes at most `top + 1` series.
    """
    by_namespace: dict[str, list[Queue]] = defaultdict(list)
    for queue in queues:
        by_namespace[queue.namespace].append(queue)
    folded: list[Queue] = []
    for namespace, members in by_namespace.items():
        members.sort(key=lambda q: (-q.depth, -q.oldest_age, q.assistant_id))
        folded.extend(members[:top])
        rest = members[top:]
        if rest:
            folded.append(
                Queue(
                    namespace,
                    OTHER,
                    sum(q.depth for q in rest),
                    max(q.oldest_age for q in rest),
                )
            )
    return folded


class QueueGauges:
    """`runplane_queue_depth`, `runplane_queue_oldest_age_seconds` and `runplane_runs`: a
    collector that serves the figures of its last `update`.

    A queue or a namespace that empties drops out of the next update rather than
    lingering at its last value; a namespace with inflight runs reports both statuses.
    The first MAX_NAMESPACES namespaces by name keep their label, later ones are summed
    as `other`, as are the assistants of a namespace beyond `max_assistants`.
    """

    def __init__(self, max_assistants: int) -> None:
        self._max_assistants = max_assistants
        self._figures: tuple[list[Queue], dict[tuple[str, RunStatus], int]] = ([], {})

    def update(self, queues: Sequence[QueueCount], runs: Sequence[RunCount], now: int) -> None:
        """New figures, read at `now` (microseconds): one assignment, so a scrape sees the
        last figures or these, never a mixture."""
        names = sorted({q.namespace for q in queues} | {c.namespace for c in runs})
        kept = set(names[:MAX_NAMESPACES])

        def label(namespace: str) -> str:
            return namespace if namespace in kept else OTHER

        merged: dict[tuple[str, str], Queue] = {}
        for q in queues:
            key = (label(q.namespace), q.assistant_id)
            age = _seconds(now - q.oldest_due)
            if (before := merged.get(key)) is not None:
                age = max(age, before.oldest_age)
            depth = q.depth + (before.depth if before is not None else 0)
            merged[key] = Queue(*key, depth, age)
        counts: dict[tuple[str, RunStatus], int] = defaultdict(int)
        for count in runs:
            counts[label(count.namespace), count.status] += count.count
        self._figures = (fold_queues(merged.values(), self._max_assistants), dict(counts))

    def collect(self) -> Iterator[Metric]:
        queues, counts = self._figures
        labels = ["namespace", "assistant_id"]
        depth = GaugeMetricFamily(
            "runplane_queue_depth",
            "Claimable PENDING runs (due, at the head of their thread), read from the database.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "runplane_queue_oldest_age_seconds",
            "How long the longest-waiting claimable run of a queue has been due.",
            labels=labels,
        )
        for queue in queues:
            depth.add_metric([queue.namespace, queue.assistant_id], queue.depth)
            age.add_metric([queue.namespace, queue.assistant_id], queue.oldest_age)
        inflight = GaugeMetricFamily(
            "runplane_runs",
            "Inflight runs by namespace and status, read from the database.",
            labels=["namespace", "status"],
        )
        for namespace in sorted({namespace for namespace, _ in counts}):
            for status in sorted(INFLIGHT):
                inflight.add_metric([namespace, status.value], counts.get((namespace, status), 0))
        yield from (depth, age, inflight)


class MetricsEndpoint:
    """`/metrics` over HTTP, served by prometheus_client from a thread of its own."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"metrics address must be HOST:PORT, got {address!r}")
        self._server, self._thread = start_http_server(
            int(port), host.strip("[]"), registry=registry
        )
        self.address = f"{host}:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
