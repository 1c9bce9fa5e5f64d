"""Local key material: the key pair, ZITADEL's key-file format, the jwt-bearer assertion."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from math import gcd
from pathlib import Path

import pytest
from authlib.jose import jwt as authlib_jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from zitadel_client import Zitadel
from zitadel_client.models import (
    UserServiceIDFilter,
    UserServiceKeysSearchFilter,
    UserServiceListKeysRequest,
)

from rotator.errors import RotatorError
from rotator.keys import (
    InvalidKeyFile,
    KeyPair,
    build_key_file,
    check_key_file,
    format_go_time,
    generate_key_pair,
    key_file_json,
    sign_assertion,
)
from rotator.zitadel.oidc import OidcClient, TokenSource
from rotator.zitadel.v2 import UserServiceTransport
from tests.harness.emulator import Emulator

NOW = datetime(2026, 11, 23, 18, 0, 0, tzinfo=UTC)
ISSUER = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def pair() -> KeyPair:
    return generate_key_pair()


def _b64url_json(part: str) -> dict[str, object]:
    decoded = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert isinstance(decoded, dict)
    return decoded


def test_key_pair_is_rsa_2048_in_zitadels_pem_encodings(pair: KeyPair) -> None:
    assert pair.private_key_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert pair.public_key_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    private = serialization.load_pem_private_key(pair.private_key_pem, None)
    public = serialization.load_pem_public_key(pair.public_key_pem)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert isinstance(public, rsa.RSAPublicKey)
    assert private.key_size == 2048
    assert private.public_key().public_numbers() == public.public_numbers()


def test_every_key_pair_is_new() -> None:
    assert generate_key_pair().public_key_pem != generate_key_pair().public_key_pem


def test_key_pair_repr_hides_the_private_key(pair: KeyPair) -> None:
    text = repr(pair)
    assert "PRIVATE" not in text
    assert pair.private_key_pem.decode().splitlines()[1] not in text


def test_key_file_is_byte_for_byte_zitadels_format() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"
    key_file = build_key_file("3001", "2001", pem.encode(), datetime(2026, 12, 23, tzinfo=UTC))
    assert list(key_file) == ["type", "keyId", "key", "expirationDate", "userId"]
    # What Go's json.Marshal of MachineKeyMarshalJSON's struct produces.
    assert key_file_json(key_file) == (
        '{"type":"serviceaccount","keyId":"3001",'
        '"key":"-----BEGIN RSA PRIVATE KEY-----\\nMIIE\\n-----END RSA PRIVATE KEY-----\\n",'
        '"expirationDate":"2026-12-23T00:00:00Z","userId":"2001"}'
    )


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (datetime(2026, 12, 23, tzinfo=UTC), "2026-12-23T00:00:00Z"),
        (datetime(2026, 12, 23, 0, 0, 0, 500000, tzinfo=UTC), "2026-12-23T00:00:00.5Z"),
        (datetime(2026, 12, 23, 0, 0, 0, 123, tzinfo=UTC), "2026-12-23T00:00:00.000123Z"),
        # Another zone is written as the same instant in UTC.
        (datetime(2026, 12, 23, 2, tzinfo=timezone(timedelta(hours=2))), "2026-12-23T00:00:00Z"),
    ],
)
def test_expiration_date_is_written_like_go_rfc3339nano(instant: datetime, expected: str) -> None:
    assert format_go_time(instant) == expected


def test_naive_expiry_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_go_time(datetime(2026, 12, 23))


def test_assertion_is_rs256_with_kid_and_verifies_with_the_public_key(pair: KeyPair) -> None:
    key_file = build_key_file("3001", "2001", pair.private_key_pem, NOW + timedelta(days=30))
    assertion = sign_assertion(key_file, ISSUER, NOW)

    header_part, claims_part, signature_part = assertion.split(".")
    assert _b64url_json(header_part) == {"alg": "RS256", "typ": "JWT", "kid": "3001"}
    issued = int(NOW.timestamp())
    assert _b64url_json(claims_part) == {
        "iss": "2001",
        "sub": "2001",
        "aud": ISSUER,
        "iat": issued,
        "exp": issued + 3600,
    }
    public = serialization.load_pem_public_key(pair.public_key_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    signature = base64.urlsafe_b64decode(signature_part + "=" * (-len(signature_part) % 4))
    public.verify(
        signature, f"{header_part}.{claims_part}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    with pytest.raises(InvalidSignature):
        public.verify(
            signature, f"{header_part}.{claims_part}x".encode(), padding.PKCS1v15(), hashes.SHA256()
        )


def test_assertion_is_accepted_by_the_sdks_jose_library(pair: KeyPair) -> None:
    # authlib is what zitadel-client signs with: an independent implementation.
    key_file = build_key_file("3001", "2001", pair.private_key_pem, NOW + timedelta(days=30))
    claims = authlib_jwt.decode(
        sign_assertion(key_file, ISSUER, NOW, lifetime=timedelta(minutes=5)), pair.public_key_pem
    )
    assert claims["aud"] == ISSUER
    assert claims["exp"] - claims["iat"] == 300


def test_a_pkcs8_private_key_signs_too(pair: KeyPair) -> None:
    private = serialization.load_pem_private_key(pair.private_key_pem, None)
    pkcs8 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file = {"keyId": "1", "userId": "2", "key": pkcs8.decode()}
    assert authlib_jwt.decode(sign_assertion(key_file, ISSUER, NOW), pair.public_key_pem)


@pytest.mark.parametrize("missing", ["keyId", "key", "userId"])
def test_incomplete_key_file_is_refused_by_name(pair: KeyPair, missing: str) -> None:
    key_file = build_key_file("3001", "2001", pair.private_key_pem, NOW)
    del key_file[missing]
    with pytest.raises(InvalidKeyFile, match=f"lacks {missing}"):
        sign_assertion(key_file, ISSUER, NOW)


def test_unusable_key_is_refused_without_quoting_it() -> None:
    garbage = (
        "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END RSA PRIVATE KEY-----\n"
    )
    with pytest.raises(InvalidKeyFile) as caught:
        sign_assertion({"keyId": "3001", "userId": "2001", "key": garbage}, ISSUER, NOW)
    assert isinstance(caught.value, RotatorError)
    assert "3001" in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)
    assert caught.value.__cause__ is None or "c2VjcmV0" not in str(caught.value.__cause__)


def _pem_of(numbers: rsa.RSAPrivateNumbers) -> str:
    """A PEM of ``numbers`` as they are, consistent or not."""
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def test_a_damaged_key_is_refused_before_it_signs_without_quoting_it(pair: KeyPair) -> None:
    """Signing skips OpenSSL's costly prime tests, not the check that the key's
    numbers belong together: one wrong CRT number and nothing is signed."""
    good = serialization.load_pem_private_key(pair.private_key_pem, None)
    assert isinstance(good, rsa.RSAPrivateKey)
    n = good.private_numbers()
    damaged = rsa.RSAPrivateNumbers(
        n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers
    )  # one bit of d mod (p-1) flipped
    key_file = {"keyId": "3001", "userId": "2001", "key": _pem_of(damaged)}
    with pytest.raises(InvalidKeyFile, match="3001: 'key' is not a PEM private key") as caught:
        sign_assertion(key_file, ISSUER, NOW)
    assert str(n.d) not in str(caught.value)
    with pytest.raises(InvalidKeyFile):
        check_key_file(key_file, test_primes=False)


def test_validate_still_tests_the_primes_signing_does_not(pair: KeyPair) -> None:
    """A key whose "primes" are composite but whose numbers fit together: only
    OpenSSL's Miller-Rabin tests (``rotator validate``) can tell."""
    primes = [
        serialization.load_pem_private_key(generate_key_pair().private_key_pem, None)
        .private_numbers()  # type: ignore[union-attr]
        .p
        for _ in range(4)
    ]
    p, q = primes[0] * primes[1], primes[2] * primes[3]
    e = 65537
    lam = (p - 1) * (q - 1) // gcd(p - 1, q - 1)
    if gcd(e, lam) != 1:
        pytest.skip("e not invertible for these composites (rare)")
    d = pow(e, -1, lam)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    )
    key_file = {"keyId": "3001", "userId": "2001", "key": _pem_of(numbers)}

    check_key_file(key_file, test_primes=False)  # the numbers fit together
    with pytest.raises(InvalidKeyFile, match="not a PEM private key"):
        check_key_file(key_file)  # validate's check: p and q are not prime


# -- against the emulator: consumers of ZITADEL key files accept ours ----------------------


def test_official_sdk_authenticates_with_our_key_file(emulator: Emulator, tmp_path: Path) -> None:
    """A consumer reading the key file from Vault with ``Zitadel.with_private_key``
    (which insists on a file path) works unchanged."""
    admin_key = json.loads(emulator.admin_key_file.read_text())
    with OidcClient(emulator.issuer) as oidc:
        transport = UserServiceTransport(emulator.issuer, TokenSource(oidc, lambda: admin_key))
        user = transport.resolve_user("svc-billing")
        pair = generate_key_pair()
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        credential = transport.add_key(user, pair.public_key_pem, expires)
    key_file = build_key_file(credential.id, user.id, pair.private_key_pem, expires)

    path = tmp_path / "key.json"  # only the test writes key material to disk
    path.write_text(key_file_json(key_file))
    try:
        client = Zitadel.with_private_key(emulator.issuer, str(path))
        own_keys = client.users.list_keys(
            UserServiceListKeysRequest(
                filters=[
                    UserServiceKeysSearchFilter(user_id_filter=UserServiceIDFilter(id=user.id))
                ]
            )
        )
    finally:
        path.unlink()
    assert credential.id in {k.id for k in own_keys.result or []}


def test_server_generated_key_file_has_the_bytes_we_build(emulator: Emulator) -> None:
    text = emulator.admin_key_file.read_text()
    server = json.loads(text)
    ours = build_key_file(
        server["keyId"],
        server["userId"],
        server["key"],
        datetime.fromisoformat(server["expirationDate"]),
    )
    assert key_file_json(ours) == text
