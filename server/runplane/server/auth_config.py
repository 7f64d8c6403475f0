"""The `--auth-config` TOML file: principals, their credentials and grants, and JWT set-up.

    [[principal]]
    name = "checkout"
    tokens_sha256 = ["<hex sha256 of a bearer token>"]
    client_cert_names = ["checkout.internal"]
    grants = [{ namespace = "shop", role = "writer" }, { namespace = "*", role = "reader" }]

    [jwt]
    jwks_file = "jwks.json"          # or public_key_file = "key.pem"; relative to this file
    issuer = "https://idp.example"
    audience = "runplane"
    principal_claim = "sub"
    grants_claim = "runplane_grants"

Parsing is strict: an unknown key, a malformed hash, a role or namespace that does not
exist, or a credential claimed by two principals is an error naming the place, so a
typo never silently grants or drops access.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runplane.server.config import ConfigError
from runplane.server.jwts import JwtVerifier
from runplane.server.policy import Grant, Principal, parse_grant

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PRINCIPAL_KEYS = {"name", "tokens_sha256", "client_cert_names", "grants"}
_GRANT_KEYS = {"namespace", "role"}
_JWT_KEYS = {
    "jwks_file",
    "public_key_file",
    "issuer",
    "audience",
    "principal_claim",
    "grants_claim",
}


@dataclass(frozen=True)
class AuthConfig:
    """Who may call: the principals by credential, and the JWT verifier if configured."""

    principals: tuple[Principal, ...]
    by_token_sha256: Mapping[bytes, Principal]
    """Principals by the sha256 digest of one of their bearer tokens."""
    by_cert_name: Mapping[str, Principal]
    jwt: JwtVerifier | None = None
    files: tuple[Path, ...] = field(default=())
    """Files this configuration was read from: re-read when any of them changes."""


def load(path: Path) -> AuthConfig:
    """Read and check the auth config at `path` (and the JWT key file it names)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"auth config {path}: {error}") from None
    try:
        return _config(document, path)
    except ConfigError as error:
        raise ConfigError(f"auth config {path}: {error}") from None


def _config(document: dict[str, Any], path: Path) -> AuthConfig:
    _only(document, {"principal", "jwt"}, "top level")
    entries = document.get("principal", [])
    if not isinstance(entries, list):
        raise ConfigError("principal must be an array of tables ([[principal]])")
    principals: list[Principal] = []
    by_token: dict[bytes, Principal] = {}
    by_cert_name: dict[str, Principal] = {}
    for index, entry in enumerate(entries):
        where = f"principal[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table")
        _only(entry, _PRINCIPAL_KEYS, where)
        principal = Principal(
            _string(entry, "name", where), _grants(entry.get("grants", []), where)
        )
        if any(other.name == principal.name for other in principals):
            raise ConfigError(f"{where}: a principal named {principal.name!r} exists already")
        principals.append(principal)
        for token_hash in _strings(entry, "tokens_sha256", where):
            if not _SHA256_HEX.fullmatch(token_hash.lower()):
                raise ConfigError(f"{where}.tokens_sha256: not a hex sha256: {token_hash!r}")
            digest = bytes.fromhex(token_hash)
            if digest in by_token:
                raise ConfigError(f"{where}.tokens_sha256: this hash is listed twice")
            by_token[digest] = principal
        for name in _strings(entry, "client_cert_names", where):
            if name in by_cert_name:
                raise ConfigError(f"{where}.client_cert_names: {name!r} is listed twice")
            by_cert_name[name] = principal
    files = [path]
    jwt = None
    if "jwt" in document:
        jwt = _jwt(document["jwt"], path.parent)
        files.append(jwt.key_file)
    return AuthConfig(tuple(principals), by_token, by_cert_name, jwt, tuple(files))


def _grants(value: object, where: str) -> tuple[Grant, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}.grants must be an array of {{ namespace, role }} tables")
    grants = []
    for index, entry in enumerate(value):
        place = f"{where}.grants[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{place} must be a {{ namespace = ..., role = ... }} table")
        _only(entry, _GRANT_KEYS, place)
        namespace, role = _string(entry, "namespace", place), _string(entry, "role", place)
        try:
            grants.append(parse_grant(namespace, role))
        except ValueError as error:
            raise ConfigError(f"{place}: {error}") from None
    return tuple(grants)


def _jwt(value: object, folder: Path) -> JwtVerifier:
    if not isinstance(value, dict):
        raise ConfigError("jwt must be a table")
    _only(value, _JWT_KEYS, "jwt")
    key_files = [key for key in ("jwks_file", "public_key_file") if key in value]
    if len(key_files) != 1:
        raise ConfigError("jwt needs exactly one of jwks_file and public_key_file")
    (kind,) = key_files
    key_file = folder / _string(value, kind, "jwt")
    return JwtVerifier.load(
        key_file,
        jwks=kind == "jwks_file",
        issuer=_string(value, "issuer", "jwt"),
        audience=_string(value, "audience", "jwt"),
        principal_claim=_string(value, "principal_claim", "jwt", default="sub"),
        grants_claim=_string(value, "grants_claim", "jwt", default="runplane_grants"),
    )


def _only(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )


def _string(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key} must be an array of non-empty strings")
    return value
