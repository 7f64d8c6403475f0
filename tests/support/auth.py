"""Auth configs and credentials made by tests: static tokens, JWTs and their signing keys."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from runplane.server.identity import hash_token, new_token

ISSUER = "https://idp.test"
AUDIENCE = "runplane"


@dataclass
class Caller:
    """One principal of a test config: its name, token and grants."""

    name: str
    grants: list[tuple[str, str]]
    token: str = field(default_factory=new_token)
    client_cert_names: list[str] = field(default_factory=list)

    def toml(self) -> str:
        grants = ", ".join(f'{{ namespace = "{ns}", role = "{role}" }}' for ns, role in self.grants)
        names = ", ".join(f'"{name}"' for name in self.client_cert_names)
        return (
            f'[[principal]]\nname = "{self.name}"\n'
            f'tokens_sha256 = ["{hash_token(self.token)}"]\n'
            f"client_cert_names = [{names}]\n"
            f"grants = [{grants}]\n"
        )


class SigningKey:
    """An RSA key pair of an identity provider, published as a JWKS file."""

    def __init__(self, key_id: str = "k1") -> None:
        self.key_id = key_id
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> str:
        public = self.private.public_key()
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        jwk.update(kid=self.key_id, use="sig", alg="RS256")
        return json.dumps({"keys": [jwk]})

    def token(self, subject: str, grants: list[str], **claims: Any) -> str:
        """A JWT for `subject`, valid for five minutes unless `claims` say otherwise."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": subject,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "runplane_grants": grants,
            **claims,
        }
        payload = {key: value for key, value in payload.items() if value is not None}
        return jwt.encode(payload, self.private, algorithm="RS256", headers={"kid": self.key_id})


def write_config(path: Path, callers: list[Caller], jwt_section: str = "") -> Path:
    """The auth config for `callers` (and a [jwt] table), replaced whole."""
    text = "\n".join(caller.toml() for caller in callers) + jwt_section
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)
    return path


def jwks_section(jwks_file: str) -> str:
    return (
        f'\n[jwt]\njwks_file = "{jwks_file}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
        'principal_claim = "sub"\ngrants_claim = "runplane_grants"\n'
    )
