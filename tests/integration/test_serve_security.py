"""`runplane serve` and `runplane auth` as a user runs them: the exposure refusal, the
security flags and their RUNPLANE_ twins, SIGHUP, and making tokens."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from runplane.client import Client, RateLimited, Unauthenticated
from tests.support.auth import Caller, write_config
from tests.support.serve_process import RUNPLANE, ServeProcess, free_port
from tests.support.tls import TlsFolder

pytestmark = pytest.mark.timeout(60)

READER = Caller("reader", [("*", "reader")])


def run_command(
    *args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNPLANE, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("flags", "missing"),
    [
        ((), "TLS (--tls-cert/--tls-key) and authentication (--auth-config)"),
        (("--auth-config", "auth.toml"), "TLS (--tls-cert/--tls-key): it is"),
        (("--tls-cert", "server.crt", "--tls-key", "server.key"), "authentication"),
    ],
)
def test_a_non_loopback_address_without_tls_and_auth_is_refused(
    tmp_path: Path, flags: tuple[str, ...], missing: str
) -> None:
    TlsFolder.make(tmp_path)
    write_config(tmp_path / "auth.toml", [READER])
    result = run_command("serve", "--address", "0.0.0.0:0", *flags, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "refusing to serve 0.0.0.0:0 without" in lines[0]
    assert missing in lines[0]
    assert "--insecure" in lines[0]
    assert not (tmp_path / "runplane.db").exists()


def test_insecure_serves_a_non_loopback_address_anyway(tmp_path: Path) -> None:
    with ServeProcess("0.0.0.0:0", f"sqlite:///{tmp_path / 'r.db'}", tmp_path, "--insecure") as s:
        port = s.address.rsplit(":", 1)[1]
        with Client(f"127.0.0.1:{port}") as client:
            client.create_run("agent")
        assert s.terminate() == 0


def test_tls_and_auth_serve_a_non_loopback_address(tmp_path: Path) -> None:
    tls = TlsFolder.make(tmp_path)
    config = write_config(tmp_path / "auth.toml", [READER])
    env = {"RUNPLANE_TLS_CERT": str(tls.cert_file), "RUNPLANE_TLS_KEY": str(tls.key_file)}
    with ServeProcess(
        "0.0.0.0:0",
        f"sqlite:///{tmp_path / 'r.db'}",
        tmp_path,
        *("--auth-config", str(config)),
        env=env,
    ) as server:
        (ready,) = [line for line in server.logs if "msg=ready" in line]
        assert "tls=on auth=on" in ready
        assert server.terminate() == 0


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--tls-cert", "server.crt"), "give both or neither"),
        (("--tls-client-ca", "ca.crt"), "--tls-client-ca needs --tls-cert and --tls-key"),
        (("--auth-config", "missing.toml"), "auth config missing.toml"),
    ],
)
def test_unusable_security_flags_are_one_line(
    tmp_path: Path, args: tuple[str, ...], problem: str
) -> None:
    TlsFolder.make(tmp_path)
    result = run_command("serve", "--address", "127.0.0.1:0", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert problem in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--rate-limit", "fast", "not a rate"),
        ("--max-watches-per-principal", "0", "positive integer"),
        ("--max-streams-per-connection", "-1", "positive integer"),
        ("--min-ping-interval", "often", "not a duration"),
    ],
)
def test_bad_limit_flags_are_usage_errors(
    tmp_path: Path, flag: str, value: str, problem: str
) -> None:
    result = run_command("serve", flag, value, cwd=tmp_path)
    assert result.returncode == 2
    assert problem in result.stderr


def test_limits_are_read_from_their_environment_twins(tmp_path: Path) -> None:
    config = write_config(tmp_path / "auth.toml", [READER])
    server = ServeProcess(
        "127.0.0.1:0",
        f"sqlite:///{tmp_path / 'r.db'}",
        tmp_path,
        *("--auth-config", str(config)),
        env={"RUNPLANE_RATE_LIMIT": "1:1"},
    )
    with server, Client(server.address, token=READER.token) as client:
        client.list_runs(page_size=1).pages().__next__()
        with pytest.raises(RateLimited):
            client.list_runs(page_size=1).pages().__next__()


def test_sighup_rereads_the_auth_config_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path / "auth.toml", [READER])
    late = Caller("late", [("*", "reader")])
    with ServeProcess(
        "127.0.0.1:0", f"sqlite:///{tmp_path / 'r.db'}", tmp_path, "--auth-config", str(config)
    ) as server:
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any('msg="auth config reloaded"' in line for line in server.logs):
            assert time.monotonic() < deadline, "\n".join(server.logs)
            time.sleep(0.05)
        write_config(config, [READER, late])
        server.process.send_signal(signal.SIGHUP)
        with Client(server.address, token=late.token) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.list_runs(page_size=1).pages().__next__()
                    break
                except Unauthenticated:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        assert server.terminate() == 0


def test_audit_lines_survive_a_quiet_log_level(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [RUNPLANE, "serve", "--address", address, "--log-level", "error"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with grpc.insecure_channel(address) as channel:  # no ready line at this level
            grpc.channel_ready_future(channel).result(timeout=20)
        with Client(address) as client:
            run = client.create_run("agent")
    finally:
        process.send_signal(signal.SIGTERM)
        _, logs = process.communicate(timeout=20)
    audit = [line for line in logs.splitlines() if "logger=runplane.audit" in line]
    assert len(audit) == 1, logs
    assert (
        f"principal=anonymous method=CreateRun namespace=default run_id={run.run_id} code=OK"
        in (audit[0])
    )


def test_new_token_prints_a_token_and_its_config_line(tmp_path: Path) -> None:
    first = run_command("auth", "new-token", cwd=tmp_path)
    second = run_command("auth", "new-token", cwd=tmp_path)
    assert first.returncode == 0
    token_line, hash_line = first.stdout.strip().splitlines()
    token = token_line.removeprefix("token: ")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert hash_line == f'tokens_sha256 = ["{hashlib.sha256(token.encode()).hexdigest()}"]'
    assert first.stdout != second.stdout


def test_hash_token_reads_the_token_on_stdin(tmp_path: Path) -> None:
    result = run_command("auth", "hash-token", cwd=tmp_path, stdin="s3cret-token\n")
    assert result.returncode == 0
    assert result.stdout.strip() == hashlib.sha256(b"s3cret-token").hexdigest()
    empty = run_command("auth", "hash-token", cwd=tmp_path, stdin="")
    assert empty.returncode == 2
    assert "no token on stdin" in empty.stderr


def test_a_made_token_authenticates(tmp_path: Path) -> None:
    made = run_command("auth", "new-token", cwd=tmp_path).stdout.splitlines()
    token = made[0].removeprefix("token: ")
    (tmp_path / "auth.toml").write_text(
        f'[[principal]]\nname = "made"\n{made[1]}\n'
        'grants = [{ namespace = "*", role = "reader" }]\n'
    )
    with ServeProcess(
        "127.0.0.1:0",
        f"sqlite:///{tmp_path / 'r.db'}",
        tmp_path,
        *("--auth-config", str(tmp_path / "auth.toml")),
    ) as server:
        with grpc.insecure_channel(server.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
        with Client(server.address, token=token) as client:
            client.list_runs(page_size=1).pages().__next__()
