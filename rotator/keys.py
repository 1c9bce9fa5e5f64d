"""Local key material: RSA key pairs, ZITADEL key files and JWT assertions.

The private key is generated here and never leaves the process except into
Vault: only the public key is uploaded to ZITADEL (``AddKey`` with
``public_key``), so ZITADEL answers without key content and the rotator builds
the key file itself, byte-for-byte in ZITADEL's own format (zitadel-api.md
§6.2), so every consumer that reads a ZITADEL key file works unchanged.

Nothing in this module writes to disk.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from rotator.errors import InvalidKeyFile

#: ZITADEL's ``SystemDefaults.SecretGenerators.MachineKeySize``.
KEY_SIZE = 2048
#: The ``type`` ZITADEL writes into every key file.
KEY_FILE_TYPE = "serviceaccount"
#: The SDK's and ZITADEL's own assertion lifetime; ZITADEL accepts ``iat`` up to 1 h old.
ASSERTION_LIFETIME = timedelta(hours=1)

_REQUIRED_FIELDS = ("keyId", "key", "userId")


@dataclass(frozen=True)
class KeyPair:
    """A fresh RSA key pair.  The private half is kept out of ``repr``."""

    #: PKCS#1 PEM (``-----BEGIN RSA PRIVATE KEY-----``), as ZITADEL emits it.
    private_key_pem: bytes = field(repr=False)
    #: SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``), what AddKey accepts.
    public_key_pem: bytes


def generate_key_pair() -> KeyPair:
    """A new RSA 2048 key pair in the PEM encodings ZITADEL uses."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    pair = KeyPair(
        private_key_pem=private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1 for RSA
            serialization.NoEncryption(),
        ),
        public_key_pem=private_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        ),
    )
    _remember(pair.private_key_pem.decode("ascii"), private_key)  # signed with at once
    return pair


def format_go_time(instant: datetime) -> str:
    """``instant`` as Go's ``time.Time`` JSON (RFC 3339 Nano, UTC): trailing
    fractional zeros dropped, ``Z`` for UTC, e.g. ``2026-12-23T00:00:00Z``."""
    if instant.tzinfo is None:
        raise ValueError("a key file expiry must be timezone-aware")
    utc = instant.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def build_key_file(
    key_id: str, user_id: str, private_key_pem: bytes | str, expires_at: datetime
) -> dict[str, str]:
    """The key file ZITADEL would have produced for this key.

    Keys are in ZITADEL's order (``type, keyId, key, expirationDate, userId``);
    serialise with :func:`key_file_json` to get ZITADEL's exact bytes.
    """
    pem = private_key_pem.decode("ascii") if isinstance(private_key_pem, bytes) else private_key_pem
    return {
        "type": KEY_FILE_TYPE,
        "keyId": key_id,
        "key": pem,
        "expirationDate": format_go_time(expires_at),
        "userId": user_id,
    }


def key_file_json(key_file: Mapping[str, Any]) -> str:
    """Compact JSON in the mapping's order, as Go's ``json.Marshal`` writes it."""
    return json.dumps(dict(key_file), separators=(",", ":"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: Parsed private keys by PEM, with whether their primes were tested.  Parsing
#: with OpenSSL's full RSA check costs ~50 ms of CPU, nearly all of it the
#: Miller-Rabin tests of p and q; the rotator signs with the same few keys again
#: and again (its own on every token refresh, each new one while verifying it),
#: so each is parsed once, and a key the rotator generated itself is never parsed.
_PARSED: OrderedDict[str, tuple[Any, bool]] = OrderedDict()
_PARSED_MAX = 256
_PARSED_LOCK = threading.Lock()


def _remember(pem: str, key: Any, primes_tested: bool = True) -> None:
    with _PARSED_LOCK:
        _PARSED[pem] = (key, primes_tested)
        _PARSED.move_to_end(pem)
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)


def _parse_pem(pem: str, *, test_primes: bool = True) -> Any:
    with _PARSED_LOCK:
        key, primes_tested = _PARSED.get(pem, (None, False))
    if key is None or (test_primes and not primes_tested):
        data = pem.encode("ascii")
        if test_primes:
            key = serialization.load_pem_private_key(data, None)
        else:
            # OpenSSL's RSA check skipped only to be replaced by the same
            # arithmetic without the primality tests (_check_rsa_numbers).
            key = serialization.load_pem_private_key(
                data, None, unsafe_skip_rsa_key_validation=True
            )
            if isinstance(key, rsa.RSAPrivateKey):
                _check_rsa_numbers(key)
        _remember(pem, key, test_primes)
    return key


def _check_rsa_numbers(key: rsa.RSAPrivateKey) -> None:
    """OpenSSL's ``RSA_check_key`` less its Miller-Rabin tests of p and q
    (microseconds instead of ~50 ms): the numbers are consistent with each
    other, so signing with them is well defined and a damaged or mismatched
    key is refused here, not by ZITADEL.  Composite "primes" consistent with
    everything else can only be crafted on purpose; ZITADEL would refuse what
    they sign.  ``rotator validate`` still tests the primes."""
    numbers = key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    p, q, d = numbers.p, numbers.q, numbers.d
    if not (
        n % 2 == 1
        and 1 < p < n
        and 1 < q < n
        and p * q == n
        and e > 1
        and (d * e) % (p - 1) == 1
        and (d * e) % (q - 1) == 1
        and numbers.dmp1 == d % (p - 1)
        and numbers.dmq1 == d % (q - 1)
        and (numbers.iqmp * q) % p == 1
    ):
        raise ValueError("inconsistent RSA private key")


def _load_private_key(
    key_file: Mapping[str, Any], *, test_primes: bool = True
) -> rsa.RSAPrivateKey:
    missing = [name for name in _REQUIRED_FIELDS if not key_file.get(name)]
    if missing:
        raise InvalidKeyFile(f"key file lacks {', '.join(missing)}")
    key_id = str(key_file.get("keyId", "?"))
    try:
        key = _parse_pem(str(key_file["key"]), test_primes=test_primes)
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        # The library's message could describe the content; name only the key id.
        raise InvalidKeyFile(f"key file {key_id}: 'key' is not a PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidKeyFile(f"key file {key_id}: 'key' is not an RSA private key")
    return key


def check_key_file(key_file: Mapping[str, Any], *, test_primes: bool = True) -> None:
    """Raise :class:`InvalidKeyFile` unless the mapping has every field the
    jwt-bearer flow needs (``keyId``, ``key``, ``userId``) and a usable key.
    ``test_primes=False`` checks the key's numbers against each other but not
    that p and q are prime (OpenSSL's tests of them are ~50 ms of CPU)."""
    _load_private_key(key_file, test_primes=test_primes)


def sign_assertion(
    key_file: Mapping[str, Any],
    audience: str,
    now: datetime,
    lifetime: timedelta = ASSERTION_LIFETIME,
) -> str:
    """An RS256 JWT for the jwt-bearer grant (RFC 7523), as ZITADEL's SDKs sign it.

    Header ``{"alg":"RS256","typ":"JWT","kid":keyId}``; claims ``iss`` = ``sub``
    = ``userId``, ``aud`` = ``audience`` (ZITADEL requires its issuer string),
    ``iat`` = ``now`` and ``exp`` = ``now + lifetime`` in whole seconds.
    """
    # a key is parsed for signing, its primes untested: _check_rsa_numbers
    private_key = _load_private_key(key_file, test_primes=False)
    issued_at = int(now.timestamp())
    header = {"alg": "RS256", "typ": "JWT", "kid": str(key_file["keyId"])}
    claims = {
        "iss": str(key_file["userId"]),
        "sub": str(key_file["userId"]),
        "aud": audience,
        "iat": issued_at,
        "exp": issued_at + int(lifetime.total_seconds()),
    }
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"
