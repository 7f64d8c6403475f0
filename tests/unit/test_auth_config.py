"""Parsing `--auth-config`: the contract's example, and each mistake named where it is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from runplane.server import auth_config
from runplane.server.config import ConfigError
from runplane.server.policy import Grant, Role
from tests.support.auth import SigningKey

HASH = hashlib.sha256(b"checkout-token").hexdigest()
OTHER_HASH = hashlib.sha256(b"other-token").hexdigest()

EXAMPLE = f"""
[[principal]]
name = "checkout"                                  # appears in audit lines
tokens_sha256 = ["{HASH}"]
client_cert_names = ["checkout.internal"]
grants = [{{ namespace = "shop", role = "writer" }}, {{ namespace = "*", role = "reader" }}]

[jwt]
jwks_file = "jwks.json"
issuer = "https://idp.example"
audience = "runplane"
principal_claim = "sub"
grants_claim = "runplane_grants"
"""


def write(folder: Path, text: str) -> Path:
    (folder / "jwks.json").write_text(SigningKey().jwks())
    path = folder / "auth.toml"
    path.write_text(text)
    return path


def test_the_contract_example_parses(tmp_path: Path) -> None:
    config = auth_config.load(write(tmp_path, EXAMPLE))
    (checkout,) = config.principals
    assert checkout.name == "checkout"
    assert checkout.grants == (Grant("shop", Role.WRITER), Grant("*", Role.READER))
    assert config.by_token_sha256 == {bytes.fromhex(HASH): checkout}
    assert config.by_cert_name == {"checkout.internal": checkout}
    assert config.jwt is not None
    assert config.files == (tmp_path / "auth.toml", tmp_path / "jwks.json")


def test_a_pem_public_key_and_default_claims(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(SigningKey().public_pem)
    path = tmp_path / "auth.toml"
    path.write_text('[jwt]\npublic_key_file = "key.pem"\nissuer = "i"\naudience = "a"\n')
    config = auth_config.load(path)
    assert config.principals == ()
    assert config.jwt is not None
    assert config.jwt.key_file == tmp_path / "key.pem"


def test_hashes_are_case_insensitive(tmp_path: Path) -> None:
    text = f'[[principal]]\nname = "p"\ntokens_sha256 = ["{HASH.upper()}"]\n'
    config = auth_config.load(write(tmp_path, text))
    assert bytes.fromhex(HASH) in config.by_token_sha256


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[principal]\n", "auth.toml"),
        ("[[principals]]\nname = 'p'\n", "top level: unknown key.* principals"),
        ("[[principal]]\nname = 'p'\ntoken_sha256 = []\n", r"principal\[0\]: unknown key"),
        ("[[principal]]\ntokens_sha256 = []\n", r"principal\[0\].name must be"),
        ("[[principal]]\nname = 'p'\ntokens_sha256 = ['abc']\n", "not a hex sha256"),
        (
            f"[[principal]]\nname = 'p'\ntokens_sha256 = ['{HASH}']\n"
            f"[[principal]]\nname = 'q'\ntokens_sha256 = ['{HASH}']\n",
            "listed twice",
        ),
        (
            "[[principal]]\nname = 'p'\nclient_cert_names = ['a']\n"
            "[[principal]]\nname = 'q'\nclient_cert_names = ['a']\n",
            "'a' is listed twice",
        ),
        ("[[principal]]\nname = 'p'\n[[principal]]\nname = 'p'\n", "named 'p' exists already"),
        ("[[principal]]\nname = 'p'\ngrants = 'admin'\n", "grants must be an array"),
        (
            "[[principal]]\nname = 'p'\ngrants = [{ namespace = 'shop', role = 'boss' }]\n",
            r"principal\[0\].grants\[0\]: role 'boss' is not one of",
        ),
        (
            "[[principal]]\nname = 'p'\ngrants = [{ namespace = 'Shop', role = 'reader' }]\n",
            "DNS label",
        ),
        (
            "[[principal]]\nname = 'p'\n"
            "grants = [{ namespace = 'shop', role = 'reader', x = 1 }]\n",
            "unknown key",
        ),
        ("[jwt]\nissuer = 'i'\naudience = 'a'\n", "exactly one of jwks_file and public_key_file"),
        (
            "[jwt]\njwks_file = 'jwks.json'\npublic_key_file = 'k.pem'\n"
            "issuer = 'i'\naudience = 'a'\n",
            "exactly one of",
        ),
        ("[jwt]\njwks_file = 'jwks.json'\naudience = 'a'\n", "jwt.issuer must be"),
        ("[jwt]\njwks_file = 'missing.json'\nissuer = 'i'\naudience = 'a'\n", "missing.json"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        auth_config.load(write(tmp_path, text))


JWT_TABLE = "[jwt]\njwks_file = 'jwks.json'\nissuer = 'i'\naudience = 'a'\n"


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("not json", "not a JSON Web Key Set"),
        ({"keys": []}, "the key set is empty"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "not an RSA, EC or OKP key"),
        ({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "d": "y"}]}, "is private"),
        ({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}, "cannot be used"),
    ],
)
def test_unusable_key_sets_are_refused(tmp_path: Path, keys: object, problem: str) -> None:
    path = write(tmp_path, JWT_TABLE)
    (tmp_path / "jwks.json").write_text(keys if isinstance(keys, str) else json.dumps(keys))
    with pytest.raises(ConfigError, match=problem):
        auth_config.load(path)


def test_a_key_set_with_several_keys_needs_key_ids(tmp_path: Path) -> None:
    path = write(tmp_path, JWT_TABLE)
    keys = [json.loads(SigningKey(kid).jwks())["keys"][0] for kid in ("a", "b")]
    del keys[1]["kid"]
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    with pytest.raises(ConfigError, match="needs a kid"):
        auth_config.load(path)


def test_a_pem_file_that_is_not_a_public_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("-----BEGIN NOTHING-----\n")
    path = tmp_path / "auth.toml"
    path.write_text('[jwt]\npublic_key_file = "key.pem"\nissuer = "i"\naudience = "a"\n')
    with pytest.raises(ConfigError, match="not a PEM public key"):
        auth_config.load(path)
