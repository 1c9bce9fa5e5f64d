"""Key material: machine-key generation (§6.2), caller-supplied public keys,
JWT signature checks (§7.2 step 6) and the instance signing key (JWKS)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

#: SystemDefaults.SecretGenerators.MachineKeySize
MACHINE_KEY_BITS = 2048

# Go's pem.Decode: the first well-formed block anywhere in the input; the label
# is not checked by ZITADEL (§6.2).
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([^\r\n-]*)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


class PublicKeyError(ValueError):
    """Not PEM-encoded PKIX (SubjectPublicKeyInfo)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=MACHINE_KEY_BITS)


def private_pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    """``-----BEGIN RSA PRIVATE KEY-----`` as in ZITADEL's key file."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_spki_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_pem(data: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def parse_public_key(data: bytes) -> bytes:
    """Validate a caller-supplied key like ZITADEL: ``pem.Decode`` (any label)
    then ``x509.ParsePKIXPublicKey``.  Returns the DER SubjectPublicKeyInfo.

    PKCS#1 ``RSA PUBLIC KEY`` bodies, raw DER and garbage are rejected.  A valid
    non-RSA PKIX key passes (ZITADEL quirk) but can never verify a JWT.
    """
    m = _PEM_BLOCK.search(data)
    if m is None:
        raise PublicKeyError("no PEM block")
    try:
        der = base64.b64decode(b"".join(m.group(2).split()), validate=True)
        key = serialization.load_der_public_key(der)
        canonical = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError) as exc:
        raise PublicKeyError("not PKIX") from exc
    # cryptography also accepts PKCS#1 RSAPublicKey DER; Go's ParsePKIXPublicKey
    # does not, and rejects trailing data.  Re-encoding catches both.
    if canonical != der:
        raise PublicKeyError("not PKIX")
    return der


def spki_der_to_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


def verify_jws(signing_input: bytes, signature: bytes, alg: str, spki_der: bytes) -> bool:
    """RS256/PS256 against an RSA key; anything else fails like ZITADEL (a
    non-RSA stored key yields no key at all)."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except ValueError:
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        if alg == "RS256":
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            key.verify(
                signature,
                signing_input,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                hashes.SHA256(),
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


def sign_jwt(key: rsa.RSAPrivateKey, kid: str, claims: dict[str, Any]) -> str:
    header = {"alg": "RS256", "kid": kid, "typ": "JWT"}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()

    def enc(value: int) -> str:
        return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": enc(numbers.n),
            "e": enc(numbers.e)}


def public_spki_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
