"""The CLI's security flags (`--tls`, `--tls-ca`, `--tls-cert`, `--tls-key`, `--token`,
`-n/--namespace`) against a real server with TLS and an auth config, certificates made
by the test. The `runplane` executable runs as a child process.

The CLI is a client: one backend (SQLite) is enough here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runplane.server.config import ServerConfig
from tests.support.auth import Caller, write_config
from tests.support.servers import ServerThread
from tests.support.tls import TlsFolder

pytestmark = pytest.mark.timeout(120)

RUNPLANE = str(Path(sys.executable).parent / "runplane")
ALICE = Caller("alice", [("team-a", "writer")])
BOB = Caller("bob", [("team-b", "writer")])
OPS = Caller("ops", [("*", "admin")], client_cert_names=["ops.internal"])


GRPC_LOG_LINE = re.compile(r"[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\] .*\n?")
"""What grpc's core library itself writes to stderr when a handshake fails."""


def runplane(*argv: str, **variables: str) -> tuple[int, str, str]:
    """`runplane argv...` with only `variables` among the RUNPLANE_* variables; its
    stderr without grpc's own log lines."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RUNPLANE_")}
    done = subprocess.run(
        [RUNPLANE, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, **variables},
        check=False,
    )
    return done.returncode, done.stdout, GRPC_LOG_LINE.sub("", done.stderr)


def succeeded(*argv: str, **variables: str) -> Any:
    code, stdout, stderr = runplane(*argv, "-o", "json", **variables)
    assert code == 0, stderr
    return json.loads(stdout)


class Secured:
    def __init__(self, folder: Path, *, client_ca: bool = False) -> None:
        self.tls = TlsFolder.make(folder)
        config = write_config(folder / "auth.toml", [ALICE, BOB, OPS])
        self.server = ServerThread(
            ServerConfig(
                address="127.0.0.1:0",
                database_url=f"sqlite:///{folder / 'runplane.db'}",
                tls_cert=self.tls.cert_file,
                tls_key=self.tls.key_file,
                tls_client_ca=self.tls.ca_file if client_ca else None,
                auth_config=config,
            )
        ).start()

    @property
    def trusted(self) -> tuple[str, ...]:
        return ("--address", self.server.address, "--tls-ca", str(self.tls.ca_file))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    secured = Secured(tmp_path_factory.mktemp("cli-tls"))
    yield secured
    secured.server.stop()


def test_a_token_and_a_namespace_given_anywhere_on_the_command_line(secured: Secured) -> None:
    created = succeeded(
        *secured.trusted, "runs", "create", "--assistant-id", "agent", "--token", ALICE.token,
        "-n", "team-a",
    )  # fmt: skip
    assert (created["namespace"], created["created_by"]) == ("team-a", "alice")
    again = succeeded(
        "runs", "--namespace", "team-a", "create", *secured.trusted, "--assistant-id", "agent",
        "--token", ALICE.token,
    )  # fmt: skip
    assert again["namespace"] == "team-a"
    shown = succeeded(*secured.trusted, "--token", ALICE.token, "runs", "get", created["run_id"])
    assert shown["run_id"] == created["run_id"]


def test_the_variables_stand_for_the_flags(secured: Secured) -> None:
    variables = {
        "RUNPLANE_ADDRESS": secured.server.address,
        "RUNPLANE_TLS_CA": str(secured.tls.ca_file),
        "RUNPLANE_TOKEN": BOB.token,
        "RUNPLANE_NAMESPACE": "team-b",
    }
    created = succeeded("runs", "create", "--assistant-id", "agent", **variables)
    assert (created["namespace"], created["created_by"]) == ("team-b", "bob")
    # The flag wins over its variable: Alice's namespace, named by Bob, is not his.
    code, _, stderr = runplane("runs", "create", "--assistant-id", "x", "-n", "team-a", **variables)
    assert code == 1
    assert "PERMISSION_DENIED" in stderr
    assert "team-a" in stderr


def test_each_tenant_lists_only_its_own_runs(secured: Secured) -> None:
    alices = succeeded(
        *secured.trusted, "--token", ALICE.token, "-n", "team-a", "runs", "create",
        "--assistant-id", "lister",
    )  # fmt: skip
    bobs = succeeded(
        *secured.trusted, "--token", BOB.token, "-n", "team-b", "runs", "create",
        "--assistant-id", "lister",
    )  # fmt: skip

    def listed(caller: Caller, *namespace: str) -> set[str]:
        runs = succeeded(
            *secured.trusted, "--token", caller.token, *namespace, "runs", "list",
            "--assistant-id", "lister",
        )  # fmt: skip
        return {run["run_id"] for run in runs}

    assert listed(ALICE) == {alices["run_id"]}
    assert listed(BOB) == {bobs["run_id"]}
    assert listed(BOB, "-n", "team-a") == set()
    code, _, stderr = runplane(
        *secured.trusted, "--token", BOB.token, "runs", "get", alices["run_id"]
    )
    assert (code, "NOT_FOUND" in stderr) == (1, True)


def test_plaintext_or_an_untrusted_server_is_refused(secured: Secured) -> None:
    address = secured.server.address
    for tls in ((), ("--tls",)):  # no TLS at all; TLS trusting only the system's CAs
        code, stdout, stderr = runplane(
            "--address", address, *tls, "--token", ALICE.token, "runs", "list"
        )
        assert (code, stdout) == (1, "")
        assert stderr.startswith("error: UNAVAILABLE"), stderr


def test_bad_credentials_are_refused(secured: Secured) -> None:
    code, _, stderr = runplane(*secured.trusted, "--token", "not-a-token", "runs", "list")
    assert code == 1
    assert "UNAUTHENTICATED" in stderr
    assert "not-a-token" not in stderr
    code, _, stderr = runplane(*secured.trusted, "runs", "list")
    assert (code, "CREDENTIALS_MISSING" in stderr) == (1, True)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("--address", "10.0.0.7:50051", "--token", "t"), "refusing to send a token in plaintext"),
        (("--tls-ca", "/no/such/ca.pem"), "cannot read /no/such/ca.pem"),
        (("--tls-cert", "{ca}"), "--tls-cert and --tls-key go together"),
        (("--tls-key", "{ca}"), "--tls-cert and --tls-key go together"),
    ],
)
def test_settings_that_cannot_work_are_usage_errors(
    secured: Secured, argv: tuple[str, ...], problem: str
) -> None:
    argv = tuple(arg.format(ca=secured.tls.ca_file) for arg in argv)
    code, stdout, stderr = runplane(*argv, "runs", "list")
    assert (code, stdout) == (2, "")
    assert problem in stderr


def test_a_client_certificate_names_the_caller(tmp_path: Path) -> None:
    mtls = Secured(tmp_path, client_ca=True)
    try:
        cert, key = mtls.tls.client_files("ops", "ops.internal")
        created = succeeded(
            *mtls.trusted, "--tls-cert", str(cert), "--tls-key", str(key), "-n", "team-b",
            "runs", "create", "--assistant-id", "agent",
        )  # fmt: skip
        assert created["created_by"] == "ops"
        # Without a certificate the server does not even finish the handshake.
        code, _, stderr = runplane(*mtls.trusted, "--token", ALICE.token, "runs", "list")
        assert (code, stderr.startswith("error: UNAVAILABLE")) == (1, True)
    finally:
        mtls.server.stop()
