"""serve_apps.auth with real PyJWT, argon2 and RSA keys (no mocks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from typer.testing import CliRunner

from churn.auth_cli import auth_app
from churn_core.settings import AuthSettings
from serve_apps.auth import (
    Authenticator,
    AuthError,
    KeyRing,
    Principal,
    Principals,
    ensure_key,
    hash_secret,
)

TEST_PRINCIPALS = Path(__file__).resolve().parents[2] / "configs" / "auth" / "test.yaml"
LOCAL_PRINCIPALS = TEST_PRINCIPALS.with_name("local.yaml")
START = 1_800_000_000.0


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def principals() -> Principals:
    return Principals.load(TEST_PRINCIPALS)


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys_dir = tmp_path_factory.mktemp("rsa")
    ensure_key(keys_dir, "rsa-1", "RS256")
    return keys_dir


MakeAuth = Callable[..., Authenticator]


@pytest.fixture
def make_auth(tmp_path: Path, principals: Principals) -> MakeAuth:
    """An Authenticator over ``keys_dir`` (default: an HS256 key ``k1`` in tmp_path)."""

    def make(
        keys_dir: Path | None = None,
        kid: str = "k1",
        algorithm: str = "HS256",
        clock: Clock | None = None,
        **overrides: Any,
    ) -> Authenticator:
        keys_dir = keys_dir or tmp_path / "keys"
        ensure_key(keys_dir, kid, algorithm)
        settings = AuthSettings(
            algorithm=algorithm,  # type: ignore[arg-type]
            active_kid=kid,
            keys_dir=keys_dir,
            principals_path=TEST_PRINCIPALS,
            **overrides,
        )
        return Authenticator(settings, principals, KeyRing.load(keys_dir), clock or Clock())

    return make


def client_token(auth: Authenticator, name: str, scope: str | None = None) -> str:
    return auth.issue(
        "client_credentials",
        client_id=name,
        client_secret=f"{name}-secret",
        username=None,
        password=None,
        scope=scope,
    ).access_token


def refused(auth: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        auth.verify(f"Bearer {token}")
    assert caught.value.status == 401
    assert token not in caught.value.message
    return caught.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade_token(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built without PyJWT, which refuses to sign some of these forgeries."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# --------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("algorithm", ["HS256", "RS256"])
def test_issue_and_verify_round_trip(
    algorithm: str, make_auth: MakeAuth, rsa_keys: Path, tmp_path: Path
) -> None:
    keys_dir, kid = (rsa_keys, "rsa-1") if algorithm == "RS256" else (tmp_path / "hs", "hs-1")
    auth = make_auth(keys_dir, kid=kid, algorithm=algorithm)
    response = auth.issue(
        "client_credentials",
        client_id="predictor-client",
        client_secret="predictor-client-secret",
        username=None,
        password=None,
        scope=None,
    )
    assert (response.token_type, response.expires_in, response.scope) == (
        "bearer",
        900,
        "predictor",
    )
    header = jwt.get_unverified_header(response.access_token)
    assert (header["alg"], header["kid"]) == (algorithm, kid)
    claims = jwt.decode(response.access_token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"] == int(START)
    assert (claims["iss"], claims["aud"], claims["cid"]) == (
        "churn-api",
        "churn-api",
        "predictor-client",
    )
    assert claims["cst"] == ["*"] and "rl" not in claims and len(claims["jti"]) >= 16

    principal = auth.verify(f"Bearer {response.access_token}")
    assert principal == Principal(
        subject="predictor-client",
        client_id="predictor-client",
        roles=frozenset({"predictor"}),
        customer_scope=("*",),
        rate_limit=None,
    )


def test_each_token_has_its_own_jti(make_auth: MakeAuth) -> None:
    auth = make_auth()
    first, second = client_token(auth, "viewer-client"), client_token(auth, "viewer-client")
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in (first, second)}
    assert len(jtis) == 2


def test_rate_limit_and_customer_scope_travel_in_the_token(make_auth: MakeAuth) -> None:
    auth = make_auth()
    limited = auth.verify(f"Bearer {client_token(auth, 'limited-client')}")
    scoped = auth.verify(f"Bearer {client_token(auth, 'scoped-client')}")
    assert limited.rate_limit == 3
    assert scoped.customer_scope == ("C0000",) and scoped.rate_limit is None


def test_from_settings_creates_the_missing_key_and_resolves_paths(tmp_path: Path) -> None:
    settings = AuthSettings(
        keys_dir=Path("keys"),
        principals_path=TEST_PRINCIPALS,
        active_kid="fresh",
        create_missing_key=True,
    )
    auth = Authenticator.from_settings(settings, lambda p: p if p.is_absolute() else tmp_path / p)
    assert (tmp_path / "keys" / "fresh.secret").is_file()
    assert auth.verify(f"Bearer {client_token(auth, 'viewer-client')}").client_id == "viewer-client"


def test_from_settings_without_create_refuses_a_missing_key(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    settings = AuthSettings(keys_dir=tmp_path / "keys", principals_path=TEST_PRINCIPALS)
    with pytest.raises(ValueError, match="'dev-1' not found"):
        Authenticator.from_settings(settings, lambda p: p)


# ------------------------------------------------------------------------------ time checks


def test_expired_token_is_refused(make_auth: MakeAuth) -> None:
    clock = Clock()
    auth = make_auth(clock=clock)
    token = client_token(auth, "viewer-client")
    clock.now = START + 899
    assert auth.verify(f"Bearer {token}").subject == "viewer-client"
    clock.now = START + 900
    error = refused(auth, token)
    assert error.error == "token_expired"
    assert error.www_authenticate is not None and 'error="invalid_token"' in error.www_authenticate


def test_token_not_yet_valid_is_refused(make_auth: MakeAuth) -> None:
    clock = Clock()
    auth = make_auth(clock=clock)
    token = client_token(auth, "viewer-client")
    clock.now = START - 10  # within the allowed clock skew between replicas
    assert auth.verify(f"Bearer {token}").subject == "viewer-client"
    clock.now = START - 120
    error = refused(auth, token)
    assert (error.error, error.message) == ("invalid_token", "token is not valid yet")


# ------------------------------------------------------------------------------- forgeries


def test_token_signed_with_another_secret_under_the_same_kid_is_refused(
    make_auth: MakeAuth, tmp_path: Path
) -> None:
    auth = make_auth(tmp_path / "real")
    forger = make_auth(tmp_path / "forged")  # same kid "k1", different random secret
    error = refused(auth, client_token(forger, "admin-client"))
    assert "signature" in error.message


def test_tampered_claims_are_refused(make_auth: MakeAuth) -> None:
    auth = make_auth()
    header, claims, signature = client_token(auth, "viewer-client").split(".")
    payload = json.loads(base64.urlsafe_b64decode(claims + "=="))
    payload["roles"] = ["admin"]
    error = refused(auth, f"{header}.{b64(json.dumps(payload).encode())}.{signature}")
    assert "signature" in error.message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"audience": "other-api"}, "audience"), ({"issuer": "evil"}, "issuer")],
)
def test_wrong_audience_or_issuer_is_refused(
    overrides: dict[str, str], expected: str, make_auth: MakeAuth, tmp_path: Path
) -> None:
    auth = make_auth()
    other = make_auth(**overrides)  # same key: only the claim differs
    error = refused(auth, client_token(other, "viewer-client"))
    assert expected in error.message


def test_alg_none_token_is_refused(make_auth: MakeAuth) -> None:
    auth = make_auth()
    valid = jwt.decode(client_token(auth, "admin-client"), options={"verify_signature": False})
    error = refused(auth, handmade_token({"alg": "none", "kid": "k1"}, valid, None))
    assert "algorithm" in error.message


def test_hs256_token_keyed_with_the_rsa_public_key_is_refused(
    make_auth: MakeAuth, rsa_keys: Path
) -> None:
    auth = make_auth(rsa_keys, kid="rsa-1", algorithm="RS256")
    claims = jwt.decode(client_token(auth, "viewer-client"), options={"verify_signature": False})
    claims["roles"] = ["admin"]
    public_pem = (rsa_keys / "rsa-1.pub.pem").read_bytes()
    forged = handmade_token({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims, public_pem)
    error = refused(auth, forged)
    assert "algorithm" in error.message


def test_unknown_kid_is_refused(make_auth: MakeAuth, tmp_path: Path) -> None:
    auth = make_auth()
    stranger = make_auth(tmp_path / "elsewhere", kid="k9")
    error = refused(auth, client_token(stranger, "viewer-client"))
    assert error.message == "token is signed with an unknown key"


def test_token_missing_a_required_claim_is_refused(make_auth: MakeAuth, tmp_path: Path) -> None:
    auth = make_auth()
    claims = jwt.decode(client_token(auth, "viewer-client"), options={"verify_signature": False})
    del claims["cst"]
    secret = (tmp_path / "keys" / "k1.secret").read_bytes().strip()
    error = refused(auth, jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "k1"}))
    assert error.message == "token lacks the 'cst' claim"


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer"])
def test_missing_bearer_token_gets_a_bare_challenge(
    header: str | None, make_auth: MakeAuth
) -> None:
    with pytest.raises(AuthError) as caught:
        make_auth().verify(header)
    error = caught.value
    assert (error.status, error.error, error.message) == (
        401,
        "invalid_token",
        "missing bearer token",
    )
    assert error.www_authenticate == "Bearer"


@pytest.mark.parametrize("garbage", ["abc", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.!!!", "x" * 9_000])
def test_garbage_tokens_are_refused(garbage: str, make_auth: MakeAuth) -> None:
    error = refused(make_auth(), garbage)
    assert error.error == "invalid_token"


# -------------------------------------------------------------------------------- rotation


def test_key_rotation(make_auth: MakeAuth, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    old_token = client_token(make_auth(keys_dir, kid="old"), "viewer-client")

    rotated = make_auth(keys_dir, kid="new")  # old key still present: verify-only now
    assert rotated.verify(f"Bearer {old_token}").client_id == "viewer-client"
    new_token = client_token(rotated, "viewer-client")
    assert jwt.get_unverified_header(new_token)["kid"] == "new"

    (keys_dir / "old.secret").unlink()
    retired = make_auth(keys_dir, kid="new")
    assert refused(retired, old_token).message == "token is signed with an unknown key"
    assert retired.verify(f"Bearer {new_token}").client_id == "viewer-client"


def test_public_only_key_verifies_but_cannot_sign(rsa_keys: Path, tmp_path: Path) -> None:
    (tmp_path / "old.pub.pem").write_bytes((rsa_keys / "rsa-1.pub.pem").read_bytes())
    keys = KeyRing.load(tmp_path)
    assert keys.kids() == ("old",) and keys.algorithm("old") == "RS256"
    assert keys.verification_key("old") is not None
    with pytest.raises(ValueError, match="only a public key"):
        keys.signing_key("old")


# ---------------------------------------------------------------------------------- grants


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [
        ("viewer-client", "wrong-secret"),
        ("no-such-client", "no-such-client-secret"),
        ("viewer-client", None),
        (None, "viewer-client-secret"),
        ("analyst", "analyst-password"),  # a user is not a client
    ],
)
def test_client_credentials_refusals_look_alike(
    client_id: str | None, secret: str | None, make_auth: MakeAuth
) -> None:
    with pytest.raises(AuthError) as caught:
        make_auth().issue(
            "client_credentials",
            client_id=client_id,
            client_secret=secret,
            username=None,
            password=None,
            scope=None,
        )
    error = caught.value
    assert (error.status, error.error, error.message) == (
        401,
        "invalid_client",
        "client authentication failed",
    )
    assert (
        error.www_authenticate
        == 'Bearer error="invalid_client", error_description="client authentication failed"'
    )


def password_grant(
    auth: Authenticator, username: str, password: str, scope: str | None = None
) -> Any:
    return auth.issue(
        "password",
        client_id=None,
        client_secret=None,
        username=username,
        password=password,
        scope=scope,
    )


def test_password_grant(make_auth: MakeAuth) -> None:
    auth = make_auth()
    response = password_grant(auth, "analyst", "analyst-password")
    principal = auth.verify(f"Bearer {response.access_token}")
    assert response.scope == "viewer predictor"
    assert (principal.subject, principal.client_id) == ("analyst", "analyst")
    assert principal.roles == frozenset({"viewer", "predictor"})


@pytest.mark.parametrize(
    ("username", "password"),
    [("analyst", "wrong"), ("ghost", "ghost-password"), ("viewer-client", "viewer-client-secret")],
)
def test_password_grant_refusals(username: str, password: str, make_auth: MakeAuth) -> None:
    with pytest.raises(AuthError) as caught:
        password_grant(make_auth(), username, password)
    assert (caught.value.status, caught.value.error) == (401, "invalid_grant")
    assert password not in caught.value.message


def test_scope_narrows_roles(make_auth: MakeAuth) -> None:
    auth = make_auth()
    response = password_grant(auth, "analyst", "analyst-password", scope="viewer")
    assert response.scope == "viewer"
    principal = auth.verify(f"Bearer {response.access_token}")
    assert principal.roles == frozenset({"viewer"}) and not principal.has_role("predictor")
    # admin implies every role, so an admin may ask for a narrower token.
    admin_narrowed = auth.verify(f"Bearer {client_token(auth, 'admin-client', scope='predictor')}")
    assert admin_narrowed.roles == frozenset({"predictor"}) and not admin_narrowed.has_role("admin")


@pytest.mark.parametrize("scope", ["admin", "viewer root"])
def test_scope_beyond_the_granted_roles_is_refused(scope: str, make_auth: MakeAuth) -> None:
    with pytest.raises(AuthError) as caught:
        password_grant(make_auth(), "analyst", "analyst-password", scope=scope)
    assert (caught.value.status, caught.value.error) == (400, "invalid_scope")
    assert caught.value.www_authenticate is None


def test_unsupported_grant_type(make_auth: MakeAuth) -> None:
    with pytest.raises(AuthError) as caught:
        make_auth().issue(
            "authorization_code",
            client_id="viewer-client",
            client_secret="viewer-client-secret",
            username=None,
            password=None,
            scope=None,
        )
    assert (caught.value.status, caught.value.error) == (400, "unsupported_grant_type")


# --------------------------------------------------------------------------- authorisation


def principal(roles: set[str], scope: tuple[str, ...] = ("*",)) -> Principal:
    return Principal("s", "c", frozenset(roles), scope, None)


def test_admin_implies_every_role_and_viewer_lacks_predictor() -> None:
    admin, viewer = principal({"admin"}), principal({"viewer"})
    assert all(admin.has_role(role) for role in ("viewer", "predictor", "admin"))
    assert viewer.has_role("viewer") and not viewer.has_role("predictor")
    admin.require("predictor")
    with pytest.raises(AuthError) as caught:
        viewer.require("predictor")
    assert (caught.value.status, caught.value.error) == (403, "insufficient_role")
    assert "predictor" in caught.value.message
    assert caught.value.www_authenticate is None


def test_customer_scope() -> None:
    scoped, everyone = principal({"predictor"}, ("C0000", "X9")), principal({"predictor"})
    assert scoped.may_access("C0000123") and scoped.may_access("X9")
    assert not scoped.may_access("C0001000") and not scoped.may_access("c0000123")
    assert everyone.may_access("anything")
    with pytest.raises(AuthError) as caught:
        scoped.require_customer("C0001\nforged log line")
    error = caught.value
    assert (error.status, error.error) == (403, "customer_out_of_scope")
    assert "\n" not in error.message and "X9" not in error.message


# ------------------------------------------------------------------------- keys and files


def test_short_hs256_secret_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "weak.secret").write_text("short-secret\n")
    with pytest.raises(ValueError, match=r"weak\.secret holds 12 bytes"):
        KeyRing.load(tmp_path)


def test_ensure_key_is_idempotent_and_private(tmp_path: Path) -> None:
    secret = ensure_key(tmp_path, "hs", "HS256")
    content = secret.read_bytes()
    assert ensure_key(tmp_path, "hs", "HS256") == secret and secret.read_bytes() == content
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="already exists"):
        ensure_key(tmp_path, "hs", "RS256")
    with pytest.raises(ValueError, match="key id"):
        ensure_key(tmp_path, "../escape", "HS256")


def test_rsa_private_key_is_private(rsa_keys: Path) -> None:
    assert stat.S_IMODE((rsa_keys / "rsa-1.pem").stat().st_mode) == 0o600
    assert KeyRing.load(rsa_keys).algorithm("rsa-1") == "RS256"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clients: [oops", "not valid YAML"),
        ("clients:\n  a:\n    secret_hash: x\n    roles: [root]\n", "clients.a.roles.0"),
        (
            "clients:\n  a:\n    secret_hash: plain-text\n    roles: [viewer]\n",
            "clients.a.secret_hash",
        ),
        ("client: {}\n", "client: Extra inputs"),
        ("users:\n", "no clients and no users"),
    ],
)
def test_bad_principals_file_is_one_line_naming_file_and_field(
    text: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "principals.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        Principals.load(path)
    message = str(caught.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_missing_principals_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        Principals.load(tmp_path / "absent.yaml")


def test_shipped_principal_files_load() -> None:
    local = Principals.load(LOCAL_PRINCIPALS)
    client = local.client("local-dev")
    assert client is not None and set(client.roles) == {"viewer", "predictor", "admin"}
    assert Principals.load(TEST_PRINCIPALS).user("analyst") is not None


def test_hash_secret_is_argon2id() -> None:
    from argon2 import PasswordHasher

    hashed = hash_secret("s3cret")
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, "s3cret")
    with pytest.raises(ValueError):
        hash_secret("")


# ------------------------------------------------------------------------------------- CLI


def test_cli_hash_reads_stdin() -> None:
    from argon2 import PasswordHasher

    result = CliRunner().invoke(auth_app, ["hash", "--stdin"], input="pa ss\n")
    assert result.exit_code == 0, result.output
    assert PasswordHasher().verify(result.output.strip(), "pa ss")


def test_cli_keygen_prints_the_path_not_the_key(tmp_path: Path) -> None:
    args = ["keygen", "--kid", "k2", "--algorithm", "HS256", "--keys-dir", str(tmp_path)]
    result = CliRunner().invoke(auth_app, args)
    assert result.exit_code == 0, result.output
    path = tmp_path / "k2.secret"
    assert result.output.strip() == str(path)
    assert path.read_text().strip() not in result.output
