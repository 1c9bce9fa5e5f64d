"""Raw-wire helpers for the emulator's conformance tests: what a client other
than the SDK puts on the wire (hand-signed assertions, plain Connect calls)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

API_SCOPE = "openid urn:zitadel:iam:org:project:id:zitadel:aud"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SERVICE = "zitadel.user.v2.UserService"

# one keep-alive client: building an httpx.Client (SSL context) per call costs ms
_http = httpx.Client(timeout=10)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_key_file(path: Path | str) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


def sign_assertion(key_file: dict[str, Any], aud: Any, **claims: Any) -> str:
    """An RFC 7523 assertion like the SDK's; ``claims`` override/extend
    (``kid``/``alg`` go to the header)."""
    now = int(time.time())
    header = {"alg": claims.pop("alg", "RS256"), "typ": "JWT",
              "kid": claims.pop("kid", key_file["keyId"])}
    payload = {"iss": key_file["userId"], "sub": key_file["userId"], "aud": aud,
               "iat": now, "exp": now + 3600}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(payload).encode())).encode()
    key = serialization.load_pem_private_key(key_file["key"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    if header["alg"] == "PS256":
        signature = key.sign(signing_input, padding.PSS(padding.MGF1(hashes.SHA256()),
                                                        padding.PSS.DIGEST_LENGTH),
                             hashes.SHA256())
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + b64url(signature)


def token_request(issuer: str, assertion: str, scope: str = API_SCOPE) -> httpx.Response:
    return _http.post(f"{issuer}/oauth/v2/token",
                      data={"grant_type": JWT_BEARER, "assertion": assertion, "scope": scope})


def access_token(issuer: str, key_file: dict[str, Any], scope: str = API_SCOPE) -> str:
    response = token_request(issuer, sign_assertion(key_file, issuer), scope)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def connect(issuer: str, method: str, body: Any, token: str | None = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
    """POST /zitadel.user.v2.UserService/<method> with a JSON body."""
    all_headers = {"Content-Type": "application/json"}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _http.post(f"{issuer}/{SERVICE}/{method}", content=content, headers=all_headers)


def local_rsa_key() -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh key pair: (private key, SubjectPublicKeyInfo PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


def key_file_for(key: rsa.RSAPrivateKey, key_id: str, user_id: str) -> dict[str, Any]:
    """The key file a client builds itself after registering a public key."""
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    return {"type": "serviceaccount", "keyId": key_id, "key": pem, "userId": user_id}


def in_days(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)
