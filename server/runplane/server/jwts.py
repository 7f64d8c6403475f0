"""JWT bearer tokens (OIDC style), verified with PyJWT against keys read from a file.

Only asymmetric keys are accepted (RSA, EC, Ed25519), and each key verifies only the
algorithms of its own type: `alg: none`, and an HMAC token "signed" with the public
key as its secret (algorithm confusion), never verify. Issuer, audience, expiry and
not-before are checked; expiry is required.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from runplane.server.config import ConfigError
from runplane.server.errors import CredentialsInvalid
from runplane.server.policy import Grant, Principal, parse_grant

LEEWAY_S = 30.0
"""Clock skew tolerated between the token's issuer and this server."""

_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_ASYMMETRIC_KEY_TYPES = {"RSA", "EC", "OKP"}


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any
    algorithms: tuple[str, ...]


class JwtVerifier:
    """Turns a JWT into the principal it names, or refuses it with CredentialsInvalid."""

    def __init__(
        self,
        key_file: Path,
        keys: dict[str, _Key],
        *,
        issuer: str,
        audience: str,
        principal_claim: str,
        grants_claim: str,
    ) -> None:
        self.key_file = key_file
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._principal_claim = principal_claim
        self._grants_claim = grants_claim

    @classmethod
    def load(
        cls,
        key_file: Path,
        *,
        jwks: bool,
        issuer: str,
        audience: str,
        principal_claim: str,
        grants_claim: str,
    ) -> JwtVerifier:
        try:
            data = key_file.read_bytes()
        except OSError as error:
            raise ConfigError(f"jwt key file {key_file}: {error.strerror}") from None
        keys = _jwks_keys(data, key_file) if jwks else {"": _pem_key(data, key_file)}
        return cls(
            key_file,
            keys,
            issuer=issuer,
            audience=audience,
            principal_claim=principal_claim,
            grants_claim=grants_claim,
        )

    def verify(self, token: str) -> Principal:
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as error:
            raise CredentialsInvalid(_refusal(error)) from None
        return self._principal(claims)

    def _key_for(self, token: str) -> _Key:
        try:
            key_id = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise CredentialsInvalid("the JWT is malformed") from None
        if len(self._keys) == 1:  # the signature decides, whatever kid says
            return next(iter(self._keys.values()))
        key = self._keys.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise CredentialsInvalid("the JWT names no key of the configured key set (kid)")
        return key

    def _principal(self, claims: dict[str, Any]) -> Principal:
        name = claims.get(self._principal_claim)
        if not isinstance(name, str) or not name:
            raise CredentialsInvalid(f"the JWT's {self._principal_claim} claim is not a name")
        return Principal(name, _claimed_grants(claims.get(self._grants_claim, [])))


_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the JWT has expired"),
    (jwt.ImmatureSignatureError, "the JWT is not valid yet (nbf)"),
    (jwt.InvalidAudienceError, "the JWT is not meant for this audience"),
    (jwt.InvalidIssuerError, "the JWT was not issued by the configured issuer"),
    (jwt.InvalidSignatureError, "the JWT's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the JWT's algorithm is not accepted for this key"),
)


def _refusal(error: jwt.PyJWTError) -> str:
    """Why a JWT was refused, in words that quote nothing of it."""
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the JWT lacks the {error.claim} claim"
    return next((why for kind, why in _REFUSALS if isinstance(error, kind)), "the JWT is malformed")


def _claimed_grants(value: object) -> tuple[Grant, ...]:
    if not isinstance(value, list):
        raise CredentialsInvalid("the JWT's grants claim is not a list of 'namespace:role'")
    grants = []
    for entry in value:
        namespace, colon, role = entry.rpartition(":") if isinstance(entry, str) else ("", "", "")
        if not colon:
            raise CredentialsInvalid(f"the JWT's grant {entry!r} is not 'namespace:role'")
        try:
            grants.append(parse_grant(namespace, role))
        except ValueError as error:
            raise CredentialsInvalid(f"the JWT's grant {entry!r}: {error}") from None
    return tuple(grants)


def _pem_key(data: bytes, path: Path) -> _Key:
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"jwt public key file {path}: not a PEM public key") from None
    return _Key(key, _algorithms(key, path))


def _algorithms(key: object, path: Path) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        return (_EC_ALGORITHMS[key.curve.name],)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    raise ConfigError(f"jwt public key file {path}: use an RSA, EC (P-256/384/521) or Ed25519 key")


def _jwks_keys(data: bytes, path: Path) -> dict[str, _Key]:
    try:
        document = json.loads(data)
        entries: Sequence[object] = document["keys"]
    except (ValueError, TypeError, KeyError):
        raise ConfigError(f"jwks file {path}: not a JSON Web Key Set") from None
    keys: dict[str, _Key] = {}
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or entry.get("kty") not in _ASYMMETRIC_KEY_TYPES:
            raise ConfigError(f"jwks file {path}: key {index} is not an RSA, EC or OKP key")
        if "d" in entry:
            raise ConfigError(f"jwks file {path}: key {index} is private; list public keys only")
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            raise ConfigError(f"jwks file {path}: key {index} cannot be used") from None
        if jwk.algorithm_name.startswith("HS") or jwk.algorithm_name == "none":
            raise ConfigError(f"jwks file {path}: key {index} names a non-asymmetric alg")
        key_id = entry.get("kid")
        if not isinstance(key_id, str) and len(entries) > 1:
            raise ConfigError(f"jwks file {path}: key {index} needs a kid (the set has several)")
        keys[key_id if isinstance(key_id, str) else ""] = _Key(jwk.key, (jwk.algorithm_name,))
    if not keys:
        raise ConfigError(f"jwks file {path}: the key set is empty")
    return keys
