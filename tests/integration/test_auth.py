"""Authentication and the coarse role check on a real server with an auth config.

The server is plaintext on loopback here (TLS has its own tests); tokens, JWTs and
client certificates are made by the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from runplane.client import Client, PermissionDenied, TLSConfig, Unauthenticated
from runplane.server.config import ServerConfig
from runplane.v1 import run_service_pb2, run_service_pb2_grpc
from tests.support.auth import AUDIENCE, ISSUER, Caller, SigningKey, jwks_section, write_config
from tests.support.servers import ServerThread
from tests.support.stubs import Failure, failure
from tests.support.tls import TlsFolder

pytestmark = pytest.mark.timeout(60)

WRITER = Caller("writer-svc", [("shop", "writer")])
WORKER = Caller("worker-pool", [("shop", "worker")])
DASHBOARD = Caller("dashboard", [("*", "reader")])
ADMIN = Caller("operator", [("*", "admin")])
NOBODY = Caller("nobody", [])
CALLERS = [WRITER, WORKER, DASHBOARD, ADMIN, NOBODY]


class Setup:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = SigningKey()
        (folder / "jwks.json").write_text(self.key.jwks())
        self.config = write_config(folder / "auth.toml", CALLERS, jwks_section("jwks.json"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="module")
def server(setup: Setup) -> Iterator[ServerThread]:
    config = ServerConfig(
        address="127.0.0.1:0",
        database_url=f"sqlite:///{setup.folder / 'runplane.db'}",
        auth_config=setup.config,
        reload_interval=0.1,
    )
    server = ServerThread(config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[run_service_pb2_grpc.RunServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield run_service_pb2_grpc.RunServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def refusal(call: Callable[[], Any]) -> Failure:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return failure(raised.value)


def get_run(
    stub: run_service_pb2_grpc.RunServiceStub, metadata: tuple[tuple[str, str], ...] = ()
) -> Failure:
    request = run_service_pb2.GetRunRequest(run_id="00000000-0000-0000-0000-000000000000")
    return refusal(lambda: stub.GetRun(request, metadata=metadata, timeout=5))


def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_call_without_credentials_is_unauthenticated(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    found = get_run(stub)
    assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING")
    assert found.domain == "runplane.dev"


def test_nothing_of_an_unauthenticated_request_is_evaluated(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    # A request that is invalid as well: authentication answers first.
    bad = run_service_pb2.CreateRunRequest(assistant_id="", thread_id="not-a-uuid")
    found = refusal(lambda: stub.CreateRun(bad, metadata=bearer("not-a-known-token")))
    assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")
    assert found.violations == {}


def test_a_watch_without_credentials_is_unauthenticated(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    stream = stub.WatchRuns(run_service_pb2.WatchRunsRequest(), timeout=5)
    found = refusal(lambda: next(iter(stream)))
    assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer unknown-token", "Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "token-without-scheme"],
)
def test_unknown_or_malformed_tokens_are_invalid(
    stub: run_service_pb2_grpc.RunServiceStub, authorization: str
) -> None:
    found = get_run(stub, (("authorization", authorization),))
    assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")
    assert "unknown-token" not in found.message


def test_a_valid_token_under_another_scheme_is_invalid(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    found = get_run(stub, (("authorization", f"Basic {ADMIN.token}"),))
    assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")


def test_two_authorization_entries_are_invalid(
    stub: run_service_pb2_grpc.RunServiceStub,
) -> None:
    # Which one would count is a question a proxy and the server could answer apart.
    found = get_run(stub, bearer(NOBODY.token) + bearer(ADMIN.token))
    assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(
    stub: run_service_pb2_grpc.RunServiceStub, scheme: str
) -> None:
    found = get_run(stub, (("authorization", f"{scheme} {DASHBOARD.token}"),))
    assert found.code == grpc.StatusCode.NOT_FOUND


def test_the_client_sends_its_token_with_every_call(server: ServerThread) -> None:
    with Client(server.address, token=WRITER.token, namespace="shop") as client:
        run = client.create_run("agent")
        assert client.get_run(run.run_id).run_id == run.run_id
        assert [r.run_id for r in client.list_runs(thread_id=run.thread_id)] == [run.run_id]
        events = client.watch_run(run.run_id)
        assert next(events).run.run_id == run.run_id
        events.close()  # type: ignore[attr-defined]


def test_health_answers_without_credentials(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_a_valid_credential(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert failure(raised.value).reason == "CREDENTIALS_MISSING"
    # NOBODY holds no role at all: a valid credential is all reflection asks.
    interceptor = _MetadataInterceptor(bearer(NOBODY.token))
    with grpc.intercept_channel(grpc.insecure_channel(server.address), interceptor) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert "runplane.v1.RunService" in services


class _MetadataInterceptor(grpc.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    """Adds metadata to reflection's stream, which takes none of its own."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        details = details._replace(metadata=self._metadata)
        return continuation(details, requests)


@pytest.mark.parametrize(
    ("caller", "call", "role_needed"),
    [
        (NOBODY, "get", "reader"),
        (DASHBOARD, "create", "writer"),
        (DASHBOARD, "claim", "worker"),
        (WORKER, "create", "writer"),
        (WRITER, "claim", "worker"),
        (WRITER, "delete_force", "admin"),
    ],
)
def test_a_caller_without_the_role_anywhere_is_denied(
    server: ServerThread, caller: Caller, call: str, role_needed: str
) -> None:
    calls: dict[str, Callable[[Client], object]] = {
        "get": lambda c: c.get_run("00000000-0000-0000-0000-000000000000"),
        "create": lambda c: c.create_run("agent"),
        "claim": lambda c: c.claim_run("w1"),
        "delete_force": lambda c: c.delete_run("00000000-0000-0000-0000-000000000000", force=True),
    }
    with (
        Client(server.address, token=caller.token) as client,
        pytest.raises(PermissionDenied) as raised,
    ):
        calls[call](client)
    assert raised.value.reason == "PERMISSION_DENIED"
    assert raised.value.metadata["role_needed"] == role_needed


def test_each_role_reaches_the_calls_it_grants(server: ServerThread) -> None:
    with (
        Client(server.address, token=WRITER.token, namespace="shop") as writer,
        Client(server.address, token=WORKER.token) as worker,
        Client(server.address, token=DASHBOARD.token) as dashboard,
        Client(server.address, token=ADMIN.token) as admin,
    ):
        run = writer.create_run("auth-roles")
        assert dashboard.get_run(run.run_id).run_id == run.run_id
        claimed = worker.claim_run("w1", assistant_ids=["auth-roles"])
        assert claimed is not None
        assert claimed.run_id == run.run_id
        worker.complete_run(run.run_id, "w1", "success")
        writer.delete_run(run.run_id)
        running = writer.create_run("auth-roles")
        worker.claim_run("w1", assistant_ids=["auth-roles"])
        admin.delete_run(running.run_id, force=True)


def test_editing_the_config_revokes_a_token_without_a_restart(
    server: ServerThread, setup: Setup
) -> None:
    revoked = Caller("temporary", [("*", "reader")])
    write_config(setup.config, [*CALLERS, revoked], jwks_section("jwks.json"))
    with Client(server.address, token=revoked.token) as client:

        def admitted() -> bool:
            try:
                client.list_runs(page_size=1).pages().__next__()
            except Unauthenticated:
                return False
            return True

        eventually(admitted)
        write_config(setup.config, CALLERS, jwks_section("jwks.json"))
        eventually(lambda: not admitted())
        with pytest.raises(Unauthenticated) as raised:
            client.list_runs(page_size=1).pages().__next__()
    assert raised.value.reason == "CREDENTIALS_INVALID"


def test_a_broken_config_keeps_the_last_good_one(
    server: ServerThread, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    good = setup.config.read_text()
    try:
        with caplog.at_level("ERROR", logger="runplane.server.reloading"):
            setup.config.write_text(good + "\n[[principal]\nname = broken")
            eventually(lambda: any("not reloaded" in r.getMessage() for r in caplog.records))
            time.sleep(0.3)  # several more looks at the unchanged broken file
        assert len(caplog.records) == 1
        with Client(server.address, token=DASHBOARD.token) as client:
            client.list_runs(page_size=1).pages().__next__()
    finally:
        setup.config.write_text(good)


def jwt_call(stub: run_service_pb2_grpc.RunServiceStub, token: str) -> Failure:
    return get_run(stub, bearer(token))


def test_a_valid_jwt_names_its_principal_and_grants(
    setup: Setup, stub: run_service_pb2_grpc.RunServiceStub, server: ServerThread
) -> None:
    token = setup.key.token("sso-user", ["*:reader"])
    assert jwt_call(stub, token).code == grpc.StatusCode.NOT_FOUND  # admitted: the run is absent
    with Client(server.address, token=token) as client, pytest.raises(PermissionDenied) as raised:
        client.create_run("agent")
    assert "sso-user" in raised.value.message
    assert raised.value.metadata["role_needed"] == "writer"
    writer = setup.key.token("sso-writer", ["shop:writer"])
    with Client(server.address, token=writer, namespace="shop") as client:
        client.create_run("agent")


def _unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key="", algorithm="none")


def _hmac_with_public_key(setup: Setup) -> str:
    now = int(time.time())
    claims = {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    # Algorithm confusion: HS256 keyed with the published public key. PyJWT refuses to
    # sign with a PEM key as an HMAC secret, so the token is put together by hand.
    import base64
    import hashlib
    import hmac
    import json

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(setup.key.public_pem, f"{header}.{body}".encode(), hashlib.sha256)
    return f"{header}.{body}.{part(signature.digest())}"


JWT_CASES: dict[str, Callable[[Setup], str]] = {
    "expired": lambda s: s.key.token("u", [], exp=int(time.time()) - 300),
    "not yet valid": lambda s: s.key.token("u", [], nbf=int(time.time()) + 300),
    "wrong audience": lambda s: s.key.token("u", [], aud="someone-else"),
    "wrong issuer": lambda s: s.key.token("u", [], iss="https://evil.test"),
    "no expiry": lambda s: s.key.token("u", [], exp=None),
    "wrong signature": lambda s: SigningKey("k1").token("u", ["*:admin"]),
    "unknown key id": lambda s: SigningKey("k2").token("u", ["*:admin"]),
    "alg none": lambda s: _unsigned(
        {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300}
    ),
    "hmac with the public key": _hmac_with_public_key,
    "bad grant": lambda s: s.key.token("u", ["shop-writer"]),
    "not a jwt": lambda s: "a.b.c",
}


@pytest.mark.parametrize("case", list(JWT_CASES))
def test_a_bad_jwt_is_refused(
    setup: Setup, stub: run_service_pb2_grpc.RunServiceStub, case: str
) -> None:
    found = jwt_call(stub, JWT_CASES[case](setup))
    assert (found.code, found.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")


def test_client_certificates_name_principals(tmp_path: Path) -> None:
    tls = TlsFolder.make(tmp_path)
    by_san = Caller("checkout", [("shop", "writer")], client_cert_names=["checkout.internal"])
    by_cn = Caller("billing", [("*", "reader")], client_cert_names=["billing"])
    config = write_config(tmp_path / "auth.toml", [by_san, by_cn])
    server = ServerThread(
        ServerConfig(
            address="127.0.0.1:0",
            database_url=f"sqlite:///{tmp_path / 'runplane.db'}",
            tls_cert=tls.cert_file,
            tls_key=tls.key_file,
            tls_client_ca=tls.ca_file,
            auth_config=config,
        )
    ).start()

    def client(common_name: str, *dns_names: str, token: str | None = None) -> Client:
        cert, key = tls.client_files(common_name, *dns_names)
        files = TLSConfig(ca_file=tls.ca_file, cert_file=cert, key_file=key)
        return Client(server.address, tls=files, token=token)

    try:
        with client("checkout-7", "checkout.internal") as checkout:
            run = checkout.create_run("agent", namespace="shop")
        with client("billing") as billing:  # no SAN: the CN names it
            assert billing.get_run(run.run_id).run_id == run.run_id
            with pytest.raises(PermissionDenied):
                billing.create_run("agent")
        with client("billing", "unknown.internal") as stranger:  # SANs win over the CN
            with pytest.raises(Unauthenticated) as raised:
                stranger.get_run(run.run_id)
            assert raised.value.reason == "CREDENTIALS_INVALID"
        # A token, when given, is the credential: here it names a reader.
        with (
            client("checkout-7", "checkout.internal", token=by_cn.token) as both,
            pytest.raises(PermissionDenied),
        ):
            both.create_run("agent")
    finally:
        server.stop()
