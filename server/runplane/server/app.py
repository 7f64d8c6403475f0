"""Assembles the gRPC server: RunService, health, reflection, graceful shutdown.

`start_server` binds and starts (tests use it with 127.0.0.1:0); `serve` is the
process around it: logging, signals, the readiness line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runplane.server import identity, logs, transport, validation
from runplane.server.cache import ReplicaCache, RunCache
from runplane.server.claims import ClaimService
from runplane.server.config import ServerConfig
from runplane.server.errors import CannotStart
from runplane.server.guard import CallGuard
from runplane.server.identity import Authenticator
from runplane.server.limits import RateLimiter, WatchCounter
from runplane.server.pages import PageTokens
from runplane.server.periodic import PeriodicTask
from runplane.server.reloading import Reloadable, Reloader
from runplane.server.retention import Retention
from runplane.server.runs import RunService
from runplane.server.servicer import RunServicer, add_to_server
from runplane.server.stats import StatsService
from runplane.server.store.database import Database, redact
from runplane.server.store.migrate import upgrade
from runplane.server.store.notifications import ChangeListener
from runplane.server.sweeper import SWEEP_INTERVAL_S, Sweeper
from runplane.server.telemetry import Telemetry
from runplane.server.wakeups import ClaimWakeups
from runplane.server.watch.compaction import Compactor
from runplane.server.watch.hub import WatchHub
from runplane.server.watch.streams import WatchService
from runplane.v1 import run_service_pb2

log = logging.getLogger("runplane.server")

RUN_SERVICE_NAME = run_service_pb2.DESCRIPTOR.services_by_name["RunService"].full_name


_QUIET_S = 0.25
"""A draining server stops once no call came for this long..."""
_REFUSALS_S = 2.0
"""...or once it has refused calls for this long, whichever comes first."""


@dataclass
class RunningServer:
    """A started runplane server."""

    config: ServerConfig
    address: str
    """host:port actually bound (the port is real even when the config asked for 0)."""
    port: int
    grpc_server: grpc.aio.Server
    health: health_aio.HealthServicer
    servicer: RunServicer
    database: Database
    hub: WatchHub
    compactor: Compactor
    retention: Retention | None
    """Deletes expired runs, with --run-retention."""
    telemetry: Telemetry
    reloader: Reloader
    """Re-reads the certificates and the auth config; `reloader.reload_now()` on SIGHUP."""
    background: list[PeriodicTask]
    """Tasks that live as long as the server: compaction, the sweeper, retention, the
    change listener, the queue gauges, the reloader (the hub runs its own tailer)."""
    listener: ChangeListener | None

    async def stop(self, grace: float | None = None) -> None:
        """Turn NOT_SERVING and refuse new calls (UNAVAILABLE), end waiting claims (empty)
        and the watches (a last bookmark, then UNAVAILABLE), let in-flight unary calls
        finish within `grace`, release the database.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.servicer.drain()
        await self.hub.close()
        # In-flight calls finish; new ones are refused until callers have heard and
        # gone quiet (a while at most: some retry in a loop), then grpc stops.
        # Calls still running after the grace are cancelled by grpc.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.servicer.calls.settled(quiet=0.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(_REFUSALS_S, max(0.0, deadline - loop.time()))):
                await self.servicer.calls.settled(quiet=_QUIET_S)
        await self.grpc_server.stop(max(0.0, deadline - loop.time()))
        for task in self.background:
            await task.stop()
        if self.listener is not None:
            await self.listener.close()
        await self.database.close()
        await asyncio.to_thread(self.telemetry.close)


@dataclass(frozen=True)
class _Edges:
    """What stands between the network and the servicer: TLS, the call guard, and the
    reloader of the files they were made from."""

    certificates: transport.ServerCertificates | None
    guard: CallGuard
    reloader: Reloader
    reloads: bool
    """Some file (certificates, auth config) is watched for changes."""

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        if self.certificates is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.certificates.credentials())


def _edges(config: ServerConfig) -> _Edges:
    """The security settings, checked and loaded: a refusal leaves nothing behind."""
    transport.check_exposure(config)
    tls = transport.tls_files(config)
    certificates = transport.ServerCertificates(tls) if tls is not None else None
    authenticator = Authenticator(config.auth_config) if config.auth_config else None
    guard = CallGuard(
        authenticator,
        WatchCounter(config.max_watches_per_principal),
        RateLimiter(config.rate_limit) if config.rate_limit else None,
    )
    reloadable: list[Reloadable] = [s for s in (certificates, authenticator) if s is not None]
    return _Edges(certificates, guard, Reloader(reloadable), bool(reloadable))


def _check_address(address: str) -> None:
    """CannotStart if `address` cannot be served, checked before anything else is done
    (grpc would say so only after the database was opened, and in several lines)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (ValueError, OSError) as error:
        raise CannotStart(f"cannot serve {address}: not a host:port address ({error})") from None
    for family, kind, protocol, _, where in found:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as error:
                raise CannotStart(f"cannot serve {address}: {error.strerror}") from None


async def start_server(config: ServerConfig) -> RunningServer:
    """Bind, open and migrate the database, start serving. A configuration that cannot
    work raises ConfigError or CannotStart, and a SQLite file created meanwhile is
    removed."""
    # Settings and the address first: a refused start makes no database file.
    edges = _edges(config)
    _check_address(config.address)
    telemetry = Telemetry.configure(config)
    try:
        database = Database(config.database_url, timer=telemetry.metrics)
    except BaseException:
        telemetry.close()
        raise
    try:
        return await _start(config, edges, telemetry, database)
    except BaseException:
        await asyncio.to_thread(database.dispose, discard_new_files=True)
        await asyncio.to_thread(telemetry.close)
        raise


def _retention(
    config: ServerConfig, database: Database, background: list[PeriodicTask]
) -> Retention | None:
    """With --run-retention, what deletes expired runs, as a task of `background`."""
    if config.run_retention is None:
        return None
    retention = Retention(database, config.run_retention)
    interval = config.retention_interval
    background.append(PeriodicTask("retention", retention.delete_expired, interval=interval))
    return retention


def _run_cache(database: Database, hub: WatchHub) -> RunCache | ReplicaCache:
    """GetRun's cache: fed by this process's writer when it is the store's only one, by
    the watch hub (every replica's commits) on a shared database."""
    if database.shared:
        replica = ReplicaCache()
        hub.follow(replica)
        return replica
    cache = RunCache()
    database.on_commit(cache.apply)
    database.on_renewal(cache.renewed)
    return cache


async def _start(
    config: ServerConfig, edges: _Edges, telemetry: Telemetry, database: Database
) -> RunningServer:
    # Telemetry outermost, so calls the guard refuses are counted and traced too.
    server = grpc.aio.server(
        interceptors=[*telemetry.interceptors(principal=identity.caller_name), edges.guard],
        options=transport.options(config),
    )
    try:
        port = edges.bind(server, config.address)
    except RuntimeError:
        raise CannotStart(f"cannot serve {config.address}: the address is in use") from None
    await asyncio.to_thread(upgrade, database.engine)
    tokens = PageTokens(await database.read(lambda unit: unit.secret("page_tokens")))
    hub = WatchHub(database, poll_interval=config.watch_poll_interval)
    await hub.start()
    wakeups = ClaimWakeups(database)
    compactor = Compactor(database, config.event_retention)
    background = [
        PeriodicTask("compaction", compactor.compact_now, interval=config.compaction_interval)
    ]

    def changed_on_some_replica(revision: int) -> None:
        wakeups.ring()  # it may have freed a run
        hub.ring(revision)

    listener = database.change_listener(changed_on_some_replica)
    if listener is not None:
        background.append(PeriodicTask("change-listener", listener.listen, interval=0))
    telemetry.attach(database, hub, compactor)
    cache = _run_cache(database, hub)
    limits = validation.Limits(max_struct_bytes=config.max_struct_bytes)
    runs = RunService(database, tokens, cache, wakeups)
    claims = ClaimService(database, wakeups, limits, max_attempts=config.max_attempts)
    watches = WatchService(database, hub, runs.lookup, max_buffered=config.watch_buffer)
    stats = StatsService(database, lambda: hub.watcher_count)
    servicer = RunServicer(runs, claims, watches, stats, limits)
    queue_gauges = telemetry.watch_queues(stats, config.stats_interval)
    if queue_gauges is not None:
        background.append(queue_gauges)
    add_to_server(servicer, server)
    sweeper = Sweeper(database, config.max_attempts, on_sweep=telemetry.swept)
    background.append(PeriodicTask("sweeper", sweeper.sweep, interval=SWEEP_INTERVAL_S))
    retention = _retention(config, database, background)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (RUN_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    telemetry.serve(config.metrics_address)
    await server.start()
    if edges.reloads:
        reload = PeriodicTask("reload", edges.reloader.check, interval=config.reload_interval)
        background.append(reload)
    for task in background:
        task.start()
    for name in ("", RUN_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = config.address.rsplit(":", 1)[0]
    return RunningServer(
        config=config,
        address=f"{host}:{port}",
        port=port,
        grpc_server=server,
        health=health_servicer,
        servicer=servicer,
        database=database,
        hub=hub,
        compactor=compactor,
        retention=retention,
        telemetry=telemetry,
        reloader=edges.reloader,
        background=background,
        listener=listener,
    )


async def serve(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    running = await start_server(config)
    loop.add_signal_handler(signal.SIGHUP, running.reloader.reload_now)
    # What start-up allocated (modules, SQLAlchemy, protobuf descriptors) lives as long
    # as the process: keep it out of the collector's full passes, which otherwise stall
    # the event loop for tens of milliseconds under a watch fan-out (p99 95 -> 65 ms
    # with 1000 watchers).
    gc.collect()
    gc.freeze()
    # A watch fan-out allocates a burst of short-lived objects per change; at CPython's
    # default young threshold (700) they promote runs cached by GetRun into full passes
    # that stall the loop. Rarer, larger young collections: with 1000 watchers after
    # make bench's unary load, p99 84 -> 60 ms (echo broadcast 47 ms), unary unchanged.
    gc.set_threshold(50_000, 50, 10)
    log.info(
        "ready",
        extra={
            "address": running.address,
            "database": redact(config.database_url),
            **running.telemetry.described(),
            "event_loop": type(loop).__module__.partition(".")[0],  # the one it runs on
            "tls": "mtls" if config.tls_client_ca else "on" if config.tls_cert else "off",
            "auth": "on" if config.auth_config else "off",
        },
    )
    await stopping.wait()
    log.info("shutting down", extra={"grace_s": config.shutdown_grace})
    await running.stop()
    log.info("stopped")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind `--event-loop` names.

    A call costs the loop a handful of callbacks, and uvloop runs each for less: end to
    end at 16 clients the server spent about a tenth less CPU per run on it (SQLite 4.0
    against 4.5 ms, PostgreSQL 4.4 against 5.0; docs/operations.md).
    """
    if kind == "uvloop":
        try:
            import uvloop  # installed with the server wherever it builds: not on Windows
        except ImportError:
            raise CannotStart(
                "--event-loop uvloop: uvloop is not installed here; use --event-loop asyncio"
            ) from None
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_on(kind: str, main: Coroutine[Any, Any, None]) -> None:
    """Run `main` to its end on a new event loop of that kind, then close the loop."""
    with asyncio.Runner(loop_factory=functools.partial(new_event_loop, kind)) as runner:
        runner.run(main)


def run(config: ServerConfig) -> None:
    logs.configure(config.log_level, config.log_format)
    run_on(config.event_loop, serve(config))
