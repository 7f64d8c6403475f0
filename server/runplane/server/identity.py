"""Who is calling: a bearer token or a client certificate, turned into a Principal.

The guard authenticates every call (`Authenticator.authenticate`) and makes the
principal it admitted available to whatever runs the call through `caller()`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path

from runplane.server import auth_config
from runplane.server.auth_config import AuthConfig
from runplane.server.errors import CredentialsInvalid, CredentialsMissing
from runplane.server.policy import Principal

calling: ContextVar[Principal] = ContextVar("runplane_caller")
"""Set by the guard, and only by it, when it admits a call. grpc.aio runs each call in a
task of its own, whose context no other call shares, so the principal lives exactly
as long as the call: interceptors outside the guard (the access log) still see it."""


def caller() -> Principal:
    """The principal the guard admitted for the call in progress (the anonymous admin
    when authentication is off). Outside a call the guard admitted it raises
    LookupError: nothing is allowed by default.
    """
    return calling.get()


def caller_name(context: object = None) -> str:
    """The admitted caller's name for log lines; "-" for a call the guard refused."""
    principal = calling.get(None)
    return "-" if principal is None else principal.name


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The sha256 hex of a token, as `tokens_sha256` in the auth config lists it."""
    return hashlib.sha256(token.encode()).hexdigest()


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The names a verified client certificate proves: its DNS SANs, else its CN."""
    names = [name.decode() for name in auth_context.get("peer_dns", ())]
    if not names:
        names = [name.decode() for name in auth_context.get("x509_common_name", ()) if name]
    return names


class Authenticator:
    """Checks credentials against the auth config file, re-read whole on reload."""

    name = "auth config"

    def __init__(self, path: Path) -> None:
        self._path = path
        self.config = auth_config.load(path)

    def files(self) -> Sequence[Path]:
        return self.config.files

    def reload(self) -> None:
        self.config = auth_config.load(self._path)

    def authenticate(
        self, authorization: str | None, certificate: Callable[[], Sequence[str]]
    ) -> Principal:
        """The principal behind an `authorization` metadata value or, without one, behind
        the client certificate (`certificate()` gives its names). Raises
        CredentialsMissing or CredentialsInvalid.
        """
        config = self.config
        if authorization is not None:
            return _bearer(config, authorization)
        names = certificate()
        if not names:
            raise CredentialsMissing()
        for name in names:
            if (principal := config.by_cert_name.get(name)) is not None:
                return principal
        raise CredentialsInvalid("the client certificate names no known principal")


def _bearer(config: AuthConfig, authorization: str) -> Principal:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise CredentialsInvalid("the authorization metadata must be 'Bearer <token>'")
    # Tokens are compared as sha256 digests, never as themselves: what a timing of the
    # lookup could reveal is how much of the digest of the attacker's own guess matches
    # a stored digest, and steering a guess toward a digest is a preimage search. That
    # keeps the comparison constant time in effect while staying one dictionary lookup
    # however many tokens the config lists.
    principal = config.by_token_sha256.get(hashlib.sha256(token.encode()).digest())
    if principal is not None:
        return principal
    if config.jwt is not None and token.count(".") == 2:
        return config.jwt.verify(token)
    raise CredentialsInvalid("unknown bearer token")
