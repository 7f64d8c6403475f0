"""TLS and mTLS on a real server with certificates made by the test, and their rotation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from runplane.client import Client, TLSConfig, Unavailable
from runplane.server.config import ConfigError, ServerConfig
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.certificates import CertificateAuthority
from tests.support.servers import ServerThread
from tests.support.tls import TlsFolder, served_serial
from tests.support.watching import cancel

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tls(tmp_path: Path) -> TlsFolder:
    return TlsFolder.make(tmp_path)


def tls_config(tls: TlsFolder, *, client_ca: Path | None = None) -> ServerConfig:
    return ServerConfig(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{tls.folder / 'runplane.db'}",
        tls_cert=tls.cert_file,
        tls_key=tls.key_file,
        tls_client_ca=client_ca,
        reload_interval=0.1,
    )


@pytest.fixture
def tls_server(tls: TlsFolder) -> Iterator[ServerThread]:
    server = ServerThread(tls_config(tls)).start()
    yield server
    server.stop()


@pytest.fixture
def mtls_server(tls: TlsFolder) -> Iterator[ServerThread]:
    # The client CA in a file of its own, so that rotating it leaves the CA clients
    # trust the server with alone.
    client_ca = tls.ca.write(tls.folder, "client-ca")
    server = ServerThread(tls_config(tls, client_ca=client_ca)).start()
    yield server
    server.stop()


def refused(call: Callable[[], object]) -> None:
    with pytest.raises(Unavailable):
        call()


def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_tls_client_that_trusts_the_ca_can_call(tls_server: ServerThread, tls: TlsFolder) -> None:
    with Client(tls_server.address, tls=TLSConfig(ca_file=tls.ca_file)) as client:
        run = client.create_run("agent")
        assert client.get_run(run.run_id) == run


def test_a_plaintext_client_cannot_call_a_tls_server(tls_server: ServerThread) -> None:
    with Client(tls_server.address, default_deadline=2) as client:
        refused(lambda: client.create_run("agent"))


def test_a_client_trusting_another_ca_is_refused(tls_server: ServerThread, tmp_path: Path) -> None:
    stranger = CertificateAuthority("another CA").write(tmp_path, "stranger")
    with Client(tls_server.address, tls=TLSConfig(ca_file=stranger), default_deadline=2) as c:
        refused(lambda: c.create_run("agent"))


def test_mtls_refuses_a_client_without_a_certificate(
    mtls_server: ServerThread, tls: TlsFolder
) -> None:
    with Client(mtls_server.address, tls=TLSConfig(ca_file=tls.ca_file), default_deadline=2) as c:
        refused(lambda: c.create_run("agent"))


def test_mtls_refuses_a_certificate_from_another_ca(
    mtls_server: ServerThread, tls: TlsFolder, tmp_path: Path
) -> None:
    cert, key = CertificateAuthority("another CA").client("intruder").write(tmp_path, "intruder")
    config = TLSConfig(ca_file=tls.ca_file, cert_file=cert, key_file=key)
    with Client(mtls_server.address, tls=config, default_deadline=2) as client:
        refused(lambda: client.create_run("agent"))


def test_mtls_accepts_a_certificate_from_its_client_ca(
    mtls_server: ServerThread, tls: TlsFolder
) -> None:
    cert, key = tls.client_files("checkout")
    config = TLSConfig(ca_file=tls.ca_file, cert_file=cert, key_file=key)
    with Client(mtls_server.address, tls=config) as client:
        run = client.create_run("agent")
        assert client.get_run(run.run_id).run_id == run.run_id


def test_server_name_verifies_a_certificate_issued_for_another_host(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority()
    cert, key = ca.server("runplane.internal").write(tmp_path, "server")
    config = ServerConfig(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path / 'runplane.db'}",
        tls_cert=cert,
        tls_key=key,
    )
    server = ServerThread(config).start()
    try:
        ca_file = ca.write(tmp_path)
        by_name = f"localhost:{server.running.port}"
        trusting = TLSConfig(ca_file=ca_file, server_name="runplane.internal")
        with Client(by_name, tls=trusting) as client:
            client.create_run("agent")
        with Client(by_name, tls=TLSConfig(ca_file=ca_file), default_deadline=2) as client:
            refused(lambda: client.create_run("agent"))
    finally:
        server.stop()


def test_rotation_serves_the_new_certificate_and_keeps_open_streams(
    tls_server: ServerThread, tls: TlsFolder
) -> None:
    first_serial = tls.serial
    assert served_serial(tls_server.address, tls.ca_file) == first_serial
    credentials = grpc.ssl_channel_credentials(tls.ca_file.read_bytes())
    with grpc.secure_channel(tls_server.address, credentials) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        first = stub.CreateRun(run_service_pb2.CreateRunRequest(assistant_id="agent"))
        # A raw stream: it cannot reconnect on its own, so any drop would fail the test.
        stream = stub.WatchRuns(
            run_service_pb2.WatchRunsRequest(
                filter=run_service_pb2.RunFilter(thread_id=first.thread_id),
                start_revision=first.revision + 1,
            ),
            timeout=30,
        )

        tls.rotate()
        eventually(lambda: served_serial(tls_server.address, tls.ca_file) == tls.serial)
        assert tls.serial != first_serial

        created = [
            stub.CreateRun(
                run_service_pb2.CreateRunRequest(assistant_id="agent", thread_id=first.thread_id)
            )
            for _ in range(3)
        ]
        received: list[str] = []
        for response in stream:
            received.extend(event.run.run_id for event in response.events)
            if len(received) == len(created):
                break
        cancel(stream)
        assert received == [run.run_id for run in created]


def test_rotating_the_client_ca_admits_clients_of_the_new_ca(
    mtls_server: ServerThread, tls: TlsFolder, tmp_path: Path
) -> None:
    successor = CertificateAuthority("successor CA")
    cert, key = successor.client("billing").write(tmp_path, "billing")
    config = TLSConfig(ca_file=tls.ca_file, cert_file=cert, key_file=key)
    with Client(mtls_server.address, tls=config, default_deadline=2) as client:
        refused(lambda: client.create_run("agent"))
    successor.write(tls.folder, "client-ca")  # the file --tls-client-ca names

    def admitted() -> bool:
        with Client(mtls_server.address, tls=config, default_deadline=2) as client:
            try:
                client.create_run("agent")
            except Unavailable:
                return False
            return True

    eventually(admitted)


def test_a_broken_rotation_keeps_the_certificate_in_force_and_says_so(
    tls_server: ServerThread, tls: TlsFolder, caplog: pytest.LogCaptureFixture
) -> None:
    serial = tls.serial
    stranger_key = tls.ca.server().key_pem  # a key that is not the certificate's
    with caplog.at_level(logging.ERROR, logger="runplane.server.reloading"):
        tls.key_file.write_bytes(stranger_key)
        eventually(lambda: any("not reloaded" in r.getMessage() for r in caplog.records))
        tls_server.running.reloader.reload_changed()  # unchanged files: no second line
    assert len(caplog.records) == 1
    assert "does not belong to the certificate" in str(caplog.records[0].__dict__["error"])
    assert served_serial(tls_server.address, tls.ca_file) == serial
    with Client(tls_server.address, tls=TLSConfig(ca_file=tls.ca_file)) as client:
        client.create_run("agent")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls_key": None}, "give both or neither"),
        ({"tls_cert": None}, "give both or neither"),
        ({"tls_key": Path("/nonexistent/server.key")}, "No such file"),
        ({"tls_cert": Path("/etc/hostname")}, "not a PEM certificate"),
    ],
)
def test_unusable_tls_settings_refuse_to_start(
    tls: TlsFolder, change: dict[str, object], message: str
) -> None:
    config = replace(tls_config(tls), **change)  # type: ignore[arg-type]
    server = ServerThread(config)
    with pytest.raises(ConfigError, match=message):
        server.start()
    server.stop()
    assert not (tls.folder / "runplane.db").exists()
