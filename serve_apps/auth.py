"""API authentication and authorisation: an OAuth2 token endpoint and JWT bearer verification.

``Authenticator.issue`` implements the ``client_credentials`` and ``password`` grants of RFC 6749
against principals (argon2 hashes in a YAML file) and signs JWTs with the active key of a
``KeyRing``; ``Authenticator.verify`` turns an ``Authorization: Bearer`` header back into a
``Principal`` whose roles and customer scope the routes check.

Keys live in ``keys_dir`` as ``<kid>.secret`` (HS256) or ``<kid>.pem`` + ``<kid>.pub.pem``
(RS256). Every key found is trusted for verification, only ``active_kid`` signs: rotating is
adding a key, pointing ``active_kid`` at it, and removing the old one once its tokens expired.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import jwt
import yaml
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import HMACAlgorithm
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from churn_core.settings import AuthSettings, PrincipalSettings, Role

ROLES: tuple[str, ...] = get_args(Role)
ALGORITHMS = ("HS256", "RS256")
MIN_SECRET_BYTES = 32
RSA_KEY_BITS = 2048
# Replicas' clocks differ a little: a token minted by one replica must not be "not yet valid"
# on another. Expiry gets no grace: the lifetime is ours to choose.
CLOCK_SKEW_S = 30
# Bearer tokens we mint are well under 2 KiB; refusing larger ones early bounds parsing work.
MAX_TOKEN_CHARS = 8_192
# Verified tokens are remembered (clients reuse one token for its whole lifetime), so a request
# costs a dict lookup instead of PyJWT's ~45 µs parse and HMAC check.
TOKEN_CACHE_SIZE = 4_096

_ErrorCode = Literal[
    "invalid_token",
    "token_expired",
    "invalid_client",
    "invalid_grant",
    "invalid_scope",
    "unsupported_grant_type",
    "insufficient_role",
    "customer_out_of_scope",
]
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "roles", "cst", "cid"]
_KID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")

SigningKey = bytes | rsa.RSAPrivateKey
VerificationKey = bytes | rsa.RSAPublicKey


class AuthError(Exception):
    """A refused request: ``status`` 400/401/403, a machine ``error`` code and a one-line ``message``.

    Messages never carry a secret or a token. 401 errors carry ``www_authenticate``, the value
    of the ``WWW-Authenticate`` response header (RFC 6750 section 3); other statuses carry None.
    """

    def __init__(
        self,
        status: int,
        error: _ErrorCode,
        message: str,
        *,
        www_authenticate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: str = error
        self.message = message
        if www_authenticate is None and status == 401:
            www_authenticate = _challenge(error, message)
        self.www_authenticate = www_authenticate

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions cross process boundaries under Ray; the default pickling would call
        # AuthError(message) and fail on the missing arguments.
        args = (self.status, self.error, self.message)
        return (AuthError, args, {"www_authenticate": self.www_authenticate})


def _challenge(error: str, message: str) -> str:
    # RFC 6750 defines invalid_token for every unusable token, expired ones included.
    code = "invalid_token" if error == "token_expired" else error
    description = message.replace("\\", "").replace('"', "'")
    return f'Bearer error="{code}", error_description="{description}"'


def _invalid_token(message: str) -> AuthError:
    return AuthError(401, "invalid_token", message)


def _one_line(value: str, limit: int = 64) -> str:
    """A caller-supplied value fit for an error message: quoted, escaped, truncated."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return repr(shown)


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for, and what it may do."""

    subject: str
    client_id: str
    roles: frozenset[str]
    customer_scope: tuple[str, ...]
    rate_limit: int | None

    def has_role(self, role: str) -> bool:
        """True when the principal holds ``role``; admin holds every role."""
        return "admin" in self.roles or role in self.roles

    def require(self, role: str) -> None:
        """Raise a 403 ``insufficient_role`` AuthError unless the principal holds ``role``."""
        if not self.has_role(role):
            raise AuthError(403, "insufficient_role", f"this request needs the '{role}' role")

    def may_access(self, customer_id: str) -> bool:
        """True when ``customer_id`` starts with one of the scope's prefixes ("*": any)."""
        return any(
            prefix == "*" or customer_id.startswith(prefix) for prefix in self.customer_scope
        )

    def require_customer(self, customer_id: str) -> None:
        """Raise a 403 ``customer_out_of_scope`` AuthError unless ``may_access(customer_id)``."""
        if not self.may_access(customer_id):
            raise AuthError(
                403,
                "customer_out_of_scope",
                f"customer_id {_one_line(customer_id)} is outside this client's customer scope",
            )


class TokenResponse(BaseModel):
    """The token endpoint's success body (RFC 6749 section 5.1)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the scheme's name, not a secret)
    expires_in: int
    scope: str


def hash_secret(secret: str) -> str:
    """An argon2id hash of ``secret`` with the library's default (production) cost."""
    if not secret:
        raise ValueError("refusing to hash an empty secret")
    return PasswordHasher().hash(secret)


# --------------------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class _Key:
    algorithm: str
    signing: SigningKey | None
    verification: VerificationKey


class KeyRing:
    """The signing and verification keys of one ``keys_dir``, decoded once."""

    def __init__(self, keys: Mapping[str, _Key], source: str = "keys") -> None:
        self._keys = dict(keys)
        self._source = source

    @classmethod
    def load(cls, keys_dir: Path) -> KeyRing:
        """Read every ``<kid>.secret``, ``<kid>.pem`` and ``<kid>.pub.pem`` in ``keys_dir``."""
        if not keys_dir.is_dir():
            raise ValueError(f"auth keys_dir {keys_dir} is not a directory")
        files: dict[str, dict[str, Path]] = {}
        for path in sorted(keys_dir.iterdir()):
            # Dot files: temporary files of ensure_key, and Kubernetes' ..data links.
            if path.name.startswith(".") or not path.is_file():
                continue
            kid, kind = _split_key_name(path.name)
            if kind is not None:
                files.setdefault(kid, {})[kind] = path
        return cls({kid: _load_key(kid, found) for kid, found in files.items()}, str(keys_dir))

    def kids(self) -> tuple[str, ...]:
        """Every key id, sorted."""
        return tuple(sorted(self._keys))

    def algorithm(self, kid: str) -> str:
        """``HS256`` or ``RS256``; ValueError for an unknown kid."""
        return self._get(kid).algorithm

    def signing_key(self, kid: str) -> SigningKey:
        """The key that signs with ``kid``; ValueError when unknown or verify-only."""
        key = self._get(kid)
        if key.signing is None:
            raise ValueError(
                f"auth key {kid!r} in {self._source} has only a public key ({kid}.pub.pem): "
                "it can verify tokens but not sign them"
            )
        return key.signing

    def verification_key(self, kid: str) -> VerificationKey:
        """The key that verifies tokens of ``kid``; a 401 AuthError for an unknown kid."""
        key = self._keys.get(kid)
        if key is None:
            raise _invalid_token("token is signed with an unknown key")
        return key.verification

    def _get(self, kid: str) -> _Key:
        key = self._keys.get(kid)
        if key is None:
            raise ValueError(
                f"auth key {kid!r} not found in {self._source} "
                f"(expected {kid}.secret or {kid}.pem; `churn auth keygen` creates one)"
            )
        return key


def _split_key_name(name: str) -> tuple[str, str | None]:
    for suffix in (".pub.pem", ".pem", ".secret"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return name, None


def _load_key(kid: str, files: Mapping[str, Path]) -> _Key:
    if ".secret" in files:
        if ".pem" in files or ".pub.pem" in files:
            raise ValueError(f"auth key {kid!r} has both a .secret and .pem files; keep one")
        secret = _read_secret(files[".secret"])
        return _Key("HS256", secret, secret)
    private = _read_private(files[".pem"]) if ".pem" in files else None
    public = _read_public(files[".pub.pem"]) if ".pub.pem" in files else None
    if public is None:
        assert private is not None  # a kid only exists when one of its files does
        public = private.public_key()
    elif private is not None and private.public_key() != public:
        raise ValueError(f"{files['.pub.pem']} is not the public key of {files['.pem']}")
    return _Key("RS256", private, public)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"HS256 key {path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed"
        )
    try:
        # PyJWT refuses PEM-looking HMAC secrets at signing time; fail at startup instead.
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError as error:
        raise ValueError(f"HS256 key {path} is not usable: {error}") from None
    return secret


def _read_private(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"RS256 key {path} is not an unencrypted PEM private key: {error}"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"RS256 key {path} is not an RSA key")
    _check_size(path, key.key_size)
    return key


def _read_public(path: Path) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as error:
        raise ValueError(f"RS256 key {path} is not a PEM public key: {error}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"RS256 key {path} is not an RSA key")
    _check_size(path, key.key_size)
    return key


def _check_size(path: Path, bits: int) -> None:
    if bits < RSA_KEY_BITS:
        raise ValueError(f"RS256 key {path} has {bits} bits; at least {RSA_KEY_BITS} are needed")


def ensure_key(keys_dir: Path, kid: str, algorithm: str) -> Path:
    """Create key ``kid`` in ``keys_dir`` unless it exists; return its (private) file's path.

    HS256 writes ``<kid>.secret``; RS256 writes ``<kid>.pem`` (mode 0o600) and ``<kid>.pub.pem``.
    Safe when several replicas start at once: the first writer wins, the others keep its key.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    if not _KID_PATTERN.fullmatch(kid) or kid.endswith(".pub"):
        raise ValueError(
            f"key id {kid!r} must be 1-64 letters, digits, '.', '_' or '-' and not end in .pub"
        )
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret_path, private_path = keys_dir / f"{kid}.secret", keys_dir / f"{kid}.pem"
    path, other = (
        (secret_path, private_path) if algorithm == "HS256" else (private_path, secret_path)
    )
    if other.exists():
        raise ValueError(f"key {kid!r} already exists as {other}, not as an {algorithm} key")
    if algorithm == "HS256":
        _write_once(path, secrets.token_urlsafe(48).encode() + b"\n", 0o600)
        return path
    if not path.exists():
        private = rsa.generate_private_key(public_exponent=65_537, key_size=RSA_KEY_BITS)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_once(path, pem, 0o600)
    # Derived from the file on disk, so it matches whichever writer won a race.
    public = _read_private(path).public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_once(keys_dir / f"{kid}.pub.pem", public_pem, 0o644)
    return path


def _write_once(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically unless it exists: readers never see a half-written key."""
    if path.exists():
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL with the final mode: the key is never readable by others, even for an instant.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # Unlike rename, link fails when another writer got there first: theirs stays.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- principals


class _PrincipalsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clients: dict[str, PrincipalSettings] = Field(default_factory=dict)
    users: dict[str, PrincipalSettings] = Field(default_factory=dict)

    @field_validator("clients", "users", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        # "users:" with nothing under it is YAML null: read it as "no users".
        return {} if value is None else value


class Principals:
    """API clients (client_credentials grant) and users (password grant), by name."""

    def __init__(
        self,
        clients: Mapping[str, PrincipalSettings],
        users: Mapping[str, PrincipalSettings],
        source: str = "principals",
    ) -> None:
        self._clients = dict(clients)
        self._users = dict(users)
        _check_principals(source, self._clients, self._users)

    @classmethod
    def load(cls, path: Path) -> Principals:
        """Parse a principals YAML file; any problem is a one-line ValueError naming the field."""
        try:
            text = path.read_text()
        except OSError as error:
            raise ValueError(f"principals file {path} cannot be read: {error.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(
                f"principals file {path} is not valid YAML: {_yaml_problem(error)}"
            ) from None
        try:
            parsed = _PrincipalsFile.model_validate(data if data is not None else {})
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise ValueError(f"principals file {path}: {field}: {first['msg']}") from None
        return cls(parsed.clients, parsed.users, str(path))

    def client(self, name: str) -> PrincipalSettings | None:
        """The client called ``name``, or None."""
        return self._clients.get(name)

    def user(self, name: str) -> PrincipalSettings | None:
        """The user called ``name``, or None."""
        return self._users.get(name)

    def secret_hashes(self) -> list[str]:
        """Every principal's argon2 hash (to tune the dummy hash that hides unknown names)."""
        return [p.secret_hash for p in [*self._clients.values(), *self._users.values()]]


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def _check_principals(
    source: str, clients: Mapping[str, PrincipalSettings], users: Mapping[str, PrincipalSettings]
) -> None:
    if not clients and not users:
        raise ValueError(f"principals file {source} defines no clients and no users")
    # A token's cid is the client or user name; rate limits count per cid, so names must not clash.
    clashes = sorted(clients.keys() & users.keys())
    if clashes:
        raise ValueError(f"principals file {source}: {clashes[0]!r} is both a client and a user")
    for section, entries in (("clients", clients), ("users", users)):
        for name, principal in entries.items():
            where = f"principals file {source}: {section}.{name}"
            try:
                extract_parameters(principal.secret_hash)
            except InvalidHashError:
                raise ValueError(
                    f"{where}.secret_hash is not an argon2 hash (`churn auth hash` prints one)"
                ) from None
            if any(not prefix for prefix in principal.customer_scope):
                # "" is a prefix of every id: say "*" when that is meant.
                raise ValueError(f"{where}.customer_scope has an empty prefix; use '*' for all")


# ------------------------------------------------------------------------------ authenticator


@dataclass(frozen=True)
class _Verified:
    """What a signature-checked token says; the time checks run on every request."""

    principal: Principal
    not_before: int
    expires_at: int


class Authenticator:
    """Issues tokens for principals and verifies bearer tokens."""

    def __init__(
        self,
        settings: AuthSettings,
        principals: Principals,
        keys: KeyRing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keys.algorithm(settings.active_kid) != settings.algorithm:
            raise ValueError(
                f"auth active_kid {settings.active_kid!r} is a "
                f"{keys.algorithm(settings.active_kid)} key but auth.algorithm is "
                f"{settings.algorithm}"
            )
        self._settings = settings
        self._principals = principals
        self._signing_key = keys.signing_key(settings.active_kid)
        # Only keys of the configured algorithm verify: an RS256 deployment must never check
        # a token's HMAC against a public key (the classic key-confusion attack).
        self._verification_keys = {
            kid: keys.verification_key(kid)
            for kid in keys.kids()
            if keys.algorithm(kid) == settings.algorithm
        }
        self._clock = clock
        self._hasher = PasswordHasher()
        self._dummy_hash = _dummy_hash(principals.secret_hashes())
        self._jwt = jwt.PyJWT(
            {
                # exp, nbf and iat are checked against the injectable clock in verify().
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "strict_aud": True,
                "require": _REQUIRED_CLAIMS,
                "enforce_minimum_key_length": True,
            }
        )
        self._verify_signed: Callable[[str], _Verified] = functools.lru_cache(
            maxsize=TOKEN_CACHE_SIZE
        )(self._decode)

    @classmethod
    def from_settings(
        cls, settings: AuthSettings, resolve: Callable[[Path], Path]
    ) -> Authenticator:
        """Load principals and keys named by ``settings`` (``resolve`` makes paths absolute)."""
        keys_dir = resolve(settings.keys_dir)
        if settings.create_missing_key:
            ensure_key(keys_dir, settings.active_kid, settings.algorithm)
        principals = Principals.load(resolve(settings.principals_path))
        return cls(settings, principals, KeyRing.load(keys_dir))

    # ---- token endpoint

    def issue(
        self,
        grant_type: str,
        *,
        client_id: str | None,
        client_secret: str | None,
        username: str | None,
        password: str | None,
        scope: str | None,
    ) -> TokenResponse:
        """Run the token endpoint (RFC 6749): authenticate, narrow roles to ``scope``, sign."""
        if grant_type == "client_credentials":
            name, principal = self._authenticate(
                self._principals.client, client_id, client_secret, _bad_client()
            )
        elif grant_type == "password":
            name, principal = self._authenticate(
                self._principals.user, username, password, _bad_user()
            )
        else:
            raise AuthError(
                400,
                "unsupported_grant_type",
                "grant_type must be 'client_credentials' or 'password'",
            )
        roles = _narrow(principal.roles, scope)
        token = self._sign(name, principal, roles)
        return TokenResponse(
            access_token=token, expires_in=self._settings.token_ttl_s, scope=" ".join(roles)
        )

    def _authenticate(
        self,
        lookup: Callable[[str], PrincipalSettings | None],
        name: str | None,
        secret: str | None,
        refusal: AuthError,
    ) -> tuple[str, PrincipalSettings]:
        principal = lookup(name) if name else None
        # An unknown name still pays for one argon2 verify, so response time does not tell
        # which names exist; the same refusal covers both cases for the same reason.
        stored = principal.secret_hash if principal is not None else self._dummy_hash
        matches = self._matches(stored, secret or "")
        if name is None or principal is None or not secret or not matches:
            raise refusal
        return name, principal

    def _matches(self, stored: str, secret: str) -> bool:
        try:
            return self._hasher.verify(stored, secret)
        except (VerificationError, InvalidHashError):
            return False

    def _sign(self, name: str, principal: PrincipalSettings, roles: tuple[str, ...]) -> str:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "sub": name,
            "iat": now,
            "nbf": now,
            "exp": now + self._settings.token_ttl_s,
            "jti": secrets.token_urlsafe(16),
            "roles": list(roles),
            "cst": list(principal.customer_scope),
            "cid": name,
        }
        if principal.rate_limit is not None:
            claims["rl"] = principal.rate_limit
        return self._jwt.encode(
            claims,
            self._signing_key,
            algorithm=self._settings.algorithm,
            headers={"kid": self._settings.active_kid},
        )

    # ---- bearer verification

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <jwt>`` header; 401 AuthError otherwise."""
        verified = self._verify_signed(_bearer_token(authorization))
        now = self._clock()
        if now >= verified.expires_at:
            raise AuthError(401, "token_expired", "token has expired; request a new one")
        if now + CLOCK_SKEW_S < verified.not_before:
            raise _invalid_token("token is not valid yet")
        return verified.principal

    def _decode(self, token: str) -> _Verified:
        """Check signature, issuer, audience and claims (pure: the result is cacheable)."""
        header = _unverified_header(token)
        if header.get("alg") != self._settings.algorithm:
            raise _invalid_token("token is not signed with the expected algorithm")
        kid = header.get("kid")
        key = self._verification_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _invalid_token("token is signed with an unknown key")
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=[self._settings.algorithm],  # never the token's own say-so
                audience=self._settings.audience,
                issuer=self._settings.issuer,
            )
        except jwt.PyJWTError as error:
            raise _invalid_token(_jwt_failure(error)) from None
        return _verified(claims)


def _bad_client() -> AuthError:
    return AuthError(401, "invalid_client", "client authentication failed")


def _bad_user() -> AuthError:
    return AuthError(401, "invalid_grant", "invalid username or password")


def _dummy_hash(hashes: list[str]) -> str:
    """A hash of a random secret with the parameters most principals use (same verify time)."""
    if not hashes:
        return PasswordHasher().hash(secrets.token_urlsafe(16))
    prefixes = Counter(h.rsplit("$", 2)[0] for h in hashes)
    common = next(h for h in hashes if h.rsplit("$", 2)[0] == prefixes.most_common(1)[0][0])
    hasher = PasswordHasher.from_parameters(extract_parameters(common))
    return hasher.hash(secrets.token_urlsafe(16))


def _narrow(granted: list[Role], scope: str | None) -> tuple[str, ...]:
    """The roles a token carries: all granted ones, or the requested subset (RFC 6749 3.3)."""
    allowed = set(ROLES) if "admin" in granted else set(granted)
    requested = set(scope.split()) if scope else set()
    if not requested:
        return tuple(role for role in ROLES if role in granted)
    if not requested <= allowed:
        raise AuthError(
            400,
            "invalid_scope",
            f"scope may only name roles this principal holds: {' '.join(sorted(allowed))}",
        )
    return tuple(role for role in ROLES if role in requested)


def _bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        # RFC 6750 3.1: a request without credentials gets a challenge without an error code.
        raise AuthError(401, "invalid_token", "missing bearer token", www_authenticate="Bearer")
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid_token("token is too long")
    return token


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, to pick the key. PyJWT re-parses and checks everything afterwards.

    PyJWT's own get_unverified_header decodes the whole token (about 20 µs); the header
    segment alone is enough here.
    """
    segment = token.split(".", 1)[0]
    if len(segment) > 1_024 or not _BASE64URL.fullmatch(segment):
        raise _invalid_token("token is malformed")
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise _invalid_token("token is malformed") from None
    if not isinstance(header, dict):
        raise _invalid_token("token is malformed")
    return header


def _jwt_failure(error: jwt.PyJWTError) -> str:
    """One line naming why PyJWT refused a token (never the token or key)."""
    if isinstance(error, jwt.InvalidSignatureError):
        return "token signature is invalid"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"token lacks the '{error.claim}' claim"
    if isinstance(error, jwt.InvalidAudienceError):
        return "token is not meant for this API (audience)"
    if isinstance(error, jwt.InvalidIssuerError):
        return "token was not issued by this API (issuer)"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "token is not signed with the expected algorithm"
    if isinstance(error, jwt.DecodeError):
        return "token is malformed"
    return "token is invalid"


def _verified(claims: dict[str, Any]) -> _Verified:
    """Check the claims' types (a signed token is ours, but a bug must not widen access)."""
    roles, scope, limit = claims["roles"], claims["cst"], claims.get("rl")
    well_formed = (
        _is_int(claims["exp"])
        and _is_int(claims["nbf"])
        and _is_int(claims["iat"])
        and isinstance(claims["cid"], str)
        and isinstance(roles, list)
        and all(role in ROLES for role in roles)
        and isinstance(scope, list)
        and all(isinstance(prefix, str) and prefix for prefix in scope)
        and (limit is None or (_is_int(limit) and limit >= 1))
    )
    if not well_formed:
        raise _invalid_token("token claims are malformed")
    principal = Principal(
        subject=claims["sub"],
        client_id=claims["cid"],
        roles=frozenset(roles),
        customer_scope=tuple(scope),
        rate_limit=limit,
    )
    return _Verified(principal, claims["nbf"], claims["exp"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
