"""The instance's web keys (§12): ``zitadel.webkey.v2.WebKeyService`` over
Connect (JSON and binary) and gRPC, the JWKS (§7.6) and the signatures of
id_tokens and JWT access tokens.

Rules (``internal/command/web_key.go``): exactly one key is ACTIVE;
activating a key makes the previous active one INACTIVE in the same step;
activating the active key is a no-op; an INACTIVE key can be activated again;
deleting the ACTIVE key is refused (FailedPrecondition ``ActiveDelete``);
deleting an unknown or removed key succeeds.  The JWKS serves INITIAL, ACTIVE
and INACTIVE keys with ``Cache-Control: max-age=300, must-revalidate``.  A
fresh instance has two keys, one of them active.

Permissions are instance-level (``iam.web_key.read|write|delete``, IAM_OWNER).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.emulator import keys as keymat
from tests.emulator.errors import EmuError, zerr
from tests.emulator.protojson import Enum, clean, ts

if TYPE_CHECKING:
    from tests.emulator.domain import Caller, Domain

SERVICE = "zitadel.webkey.v2.WebKeyService"
CACHE_CONTROL = "max-age=300, must-revalidate"  # OIDC.JWKSCacheControlMaxAge 5m

INITIAL, ACTIVE, INACTIVE, REMOVED = 1, 2, 3, 4
STATE = Enum("zitadel.webkey.v2.State", {
    "STATE_UNSPECIFIED": 0, "STATE_INITIAL": 1, "STATE_ACTIVE": 2, "STATE_INACTIVE": 3,
    "STATE_REMOVED": 4})
RSA_BITS_ENUM = Enum("zitadel.webkey.v2.RSABits", {
    "RSA_BITS_UNSPECIFIED": 0, "RSA_BITS_2048": 1, "RSA_BITS_3072": 2, "RSA_BITS_4096": 3})
RSA_HASHER_ENUM = Enum("zitadel.webkey.v2.RSAHasher", {
    "RSA_HASHER_UNSPECIFIED": 0, "RSA_HASHER_SHA256": 1, "RSA_HASHER_SHA384": 2,
    "RSA_HASHER_SHA512": 3})
ECDSA_CURVE_ENUM = Enum("zitadel.webkey.v2.ECDSACurve", {
    "ECDSA_CURVE_UNSPECIFIED": 0, "ECDSA_CURVE_P256": 1, "ECDSA_CURVE_P384": 2,
    "ECDSA_CURVE_P512": 3})

RSA_BITS = {1: 2048, 2: 3072, 3: 4096}
RSA_HASHERS: dict[int, tuple[str, type[hashes.HashAlgorithm]]] = {
    1: ("RS256", hashes.SHA256), 2: ("RS384", hashes.SHA384), 3: ("RS512", hashes.SHA512)}
#: curve enum -> (curve, JWS alg, JWK crv, coordinate bytes, hash)
CURVES: dict[int, tuple[ec.EllipticCurve, str, str, int, type[hashes.HashAlgorithm]]] = {
    1: (ec.SECP256R1(), "ES256", "P-256", 32, hashes.SHA256),
    2: (ec.SECP384R1(), "ES384", "P-384", 48, hashes.SHA384),
    3: (ec.SECP521R1(), "ES512", "P-521", 66, hashes.SHA512),
}

ERR_NOT_FOUND = ("not_found", "Errors.WebKey.NotFound", "COMMAND-teiG3")
ERR_ACTIVE_DELETE = ("failed_precondition", "Errors.WebKey.ActiveDelete", "COMMAND-Chai1")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS web_keys (
  id TEXT PRIMARY KEY, state INTEGER NOT NULL, config TEXT NOT NULL, private_pem TEXT NOT NULL,
  created TEXT NOT NULL, changed TEXT NOT NULL, removed_at TEXT);
"""


@dataclass(frozen=True)
class KeyConfig:
    """The request's ``key`` oneof: ``{"rsa": {"bits", "hasher"}}``,
    ``{"ecdsa": {"curve"}}`` or ``{"ed25519": {}}`` (enum numbers)."""

    kind: str  # "rsa" | "ecdsa" | "ed25519"
    bits: int = 1
    hasher: int = 1
    curve: int = 0

    @staticmethod
    def from_request(req: Mapping[str, Any]) -> KeyConfig:
        if "ecdsa" in req:
            return KeyConfig("ecdsa", curve=int(req["ecdsa"].get("curve", 0)))
        if "ed25519" in req:
            return KeyConfig("ed25519")
        if "rsa" in req:
            rsa_req = req["rsa"]
            return KeyConfig("rsa", bits=int(rsa_req.get("bits", 0)),
                             hasher=int(rsa_req.get("hasher", 0)))
        return KeyConfig("rsa")  # none set: RSA-2048 / SHA256

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "bits": self.bits, "hasher": self.hasher,
                           "curve": self.curve})

    @staticmethod
    def from_json(text: str) -> KeyConfig:
        d = json.loads(text)
        return KeyConfig(str(d["kind"]), int(d["bits"]), int(d["hasher"]), int(d["curve"]))

    @property
    def alg(self) -> str:
        if self.kind == "rsa":
            return RSA_HASHERS[self.hasher][0]
        if self.kind == "ecdsa":
            return CURVES[self.curve][1]
        return "EdDSA"

    def generate(self) -> Any:
        if self.kind == "rsa":
            return rsa.generate_private_key(public_exponent=65537,
                                            key_size=RSA_BITS[self.bits])
        if self.kind == "ecdsa":
            return ec.generate_private_key(CURVES[self.curve][0])
        return ed25519.Ed25519PrivateKey.generate()

    def message(self) -> dict[str, Any]:
        """The ``key`` oneof of a listed WebKey (protojson)."""
        if self.kind == "rsa":
            return {"rsa": {"bits": RSA_BITS_ENUM.name_of(self.bits),
                            "hasher": RSA_HASHER_ENUM.name_of(self.hasher)}}
        if self.kind == "ecdsa":
            return {"ecdsa": {"curve": ECDSA_CURVE_ENUM.name_of(self.curve)}}
        return {"ed25519": {}}


@dataclass(frozen=True)
class WebKey:
    id: str
    state: int
    config: KeyConfig
    created: int
    changed: int


# --- crypto -----------------------------------------------------------------------------


def _uint(value: int, size: int | None = None) -> str:
    size = size or (value.bit_length() + 7) // 8
    return keymat.b64url(value.to_bytes(size, "big"))


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, str]:
    out = {"use": "sig", "kid": kid, "alg": alg}
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        out.update(kty="RSA", n=_uint(numbers.n), e=_uint(numbers.e))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        pub = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        out.update(kty="EC", crv=crv, x=_uint(pub.x, size), y=_uint(pub.y, size))
    else:
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        out.update(kty="OKP", crv="Ed25519", x=keymat.b64url(raw))
    return out


def sign_jws(key: Any, config: KeyConfig, kid: str, claims: Mapping[str, Any]) -> str:
    header = {"alg": config.alg, "kid": kid, "typ": "JWT"}
    signing_input = (keymat.b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + keymat.b64url(json.dumps(dict(claims), separators=(",", ":")).encode()))
    data = signing_input.encode("ascii")
    if config.kind == "rsa":
        sig = key.sign(data, padding.PKCS1v15(), RSA_HASHERS[config.hasher][1]())
    elif config.kind == "ecdsa":
        _curve, _alg, _crv, size, digest = CURVES[config.curve]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest())))
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        sig = key.sign(data)
    return signing_input + "." + keymat.b64url(sig)


def _pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# --- the store ----------------------------------------------------------------------------


class WebKeys:
    """The web keys of one emulated instance, in its SQLite database."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self._private: dict[str, Any] = {}
        self._seeded = False
        self._seed_lock = threading.Lock()
        with domain._lock:
            domain._db.executescript(_SCHEMA)

    # -- reading

    def _row(self, row: Any) -> WebKey:
        return WebKey(row["id"], int(row["state"]), KeyConfig.from_json(row["config"]),
                      int(row["created"]), int(row["changed"]))

    def _ensure(self) -> None:
        """A fresh instance starts with two keys, one of them active.  The active
        one is the emulator's original signing key (same kid as before web keys
        existed here), created on first use like it."""
        if self._seeded:
            return
        with self._seed_lock:
            if self._seeded:
                return
            if not self.domain._q("SELECT 1 FROM web_keys LIMIT 1"):
                first = self.domain.signing_key
                second = KeyConfig("rsa").generate()
                now = self.domain.now()
                cfg = KeyConfig("rsa").to_json()
                with self.domain._tx() as db:
                    if not db.execute("SELECT 1 FROM web_keys LIMIT 1").fetchall():
                        db.execute("INSERT INTO web_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                                   (self.domain.signing_key_id, ACTIVE, cfg, _pem(first),
                                    str(now), str(now)))
                        db.execute("INSERT INTO web_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                                   (self.domain._new_id(), INITIAL, cfg, _pem(second),
                                    str(now), str(now)))
            self._seeded = True

    def all(self, *, with_removed: bool = False) -> list[WebKey]:
        self._ensure()
        rows = self.domain._q("SELECT * FROM web_keys ORDER BY created, id")
        return [k for k in map(self._row, rows) if with_removed or k.state != REMOVED]

    def get(self, key_id: str) -> WebKey | None:
        self._ensure()
        rows = self.domain._q("SELECT * FROM web_keys WHERE id = ?", key_id)
        return self._row(rows[0]) if rows else None

    def active(self) -> WebKey:
        found = [k for k in self.all() if k.state == ACTIVE]
        assert len(found) == 1, f"{len(found)} active web keys"
        return found[0]

    def private(self, key_id: str) -> Any:
        with self.domain._lock:
            if key_id not in self._private:
                rows = self.domain._q("SELECT private_pem FROM web_keys WHERE id = ?", key_id)
                self._private[key_id] = serialization.load_pem_private_key(
                    rows[0]["private_pem"].encode(), password=None)
            return self._private[key_id]

    # -- the rules of §12

    def create(self, config: KeyConfig) -> WebKey:
        self._ensure()
        private = config.generate()
        now = self.domain.now()
        with self.domain._tx() as db:
            key_id = self.domain._new_id()
            db.execute("INSERT INTO web_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                       (key_id, INITIAL, config.to_json(), _pem(private), str(now), str(now)))
        self._private[key_id] = private
        return WebKey(key_id, INITIAL, config, now, now)

    def activate(self, key_id: str) -> int:
        self._ensure()
        now = self.domain.now()
        with self.domain._tx() as db:
            rows = db.execute("SELECT state, changed FROM web_keys WHERE id = ?",
                              (key_id,)).fetchall()
            if not rows or int(rows[0]["state"]) == REMOVED:
                raise zerr(*ERR_NOT_FOUND)
            if int(rows[0]["state"]) == ACTIVE:
                return int(rows[0]["changed"])  # a successful no-op
            db.execute("UPDATE web_keys SET state = ?, changed = ? WHERE state = ?",
                       (INACTIVE, str(now), ACTIVE))
            db.execute("UPDATE web_keys SET state = ?, changed = ? WHERE id = ?",
                       (ACTIVE, str(now), key_id))
        return now

    def delete(self, key_id: str) -> int | None:
        """The deletion date; None when the key was unknown or already removed."""
        self._ensure()
        now = self.domain.now()
        with self.domain._tx() as db:
            rows = db.execute("SELECT state FROM web_keys WHERE id = ?", (key_id,)).fetchall()
            if not rows or int(rows[0]["state"]) == REMOVED:
                return None
            if int(rows[0]["state"]) == ACTIVE:
                raise zerr(*ERR_ACTIVE_DELETE)
            db.execute("UPDATE web_keys SET state = ?, changed = ?, removed_at = ? WHERE id = ?",
                       (REMOVED, str(now), str(now), key_id))
        return now

    # -- OIDC

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.private(k.id), k.id, k.config.alg) for k in self.all()]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A JWT signed with the ACTIVE key (its kid in the header)."""
        key = self.active()
        return sign_jws(self.private(key.id), key.config, key.id, claims)


# --- the service --------------------------------------------------------------------------

READ, WRITE, DELETE = "iam.web_key.read", "iam.web_key.write", "iam.web_key.delete"


def _authorize(domain: Domain, caller: Caller, permission: str) -> None:
    # instance-level permission: only instance memberships (IAM_*) can hold it
    domain._check(caller, permission, caller.org_id, "AUTH-5mWD2")


def _web_key(key: WebKey) -> dict[str, Any]:
    out: dict[str, Any] = {"id": key.id, "creationDate": ts(key.created),
                           "changeDate": ts(key.changed), "state": STATE.name_of(key.state)}
    out.update(key.config.message())
    return out


def _create(d: Domain, c: Caller, r: dict[str, Any]) -> dict[str, Any]:
    _authorize(d, c, WRITE)
    key = d.web_keys.create(KeyConfig.from_request(r))
    return {"id": key.id, "creationDate": ts(key.created)}


def _activate(d: Domain, c: Caller, r: dict[str, Any]) -> dict[str, Any]:
    _authorize(d, c, WRITE)
    return {"changeDate": ts(d.web_keys.activate(r["id"]))}


def _delete(d: Domain, c: Caller, r: dict[str, Any]) -> dict[str, Any]:
    _authorize(d, c, DELETE)
    deleted = d.web_keys.delete(r["id"])
    return {} if deleted is None else {"deletionDate": ts(deleted)}


def _list(d: Domain, c: Caller, r: dict[str, Any]) -> dict[str, Any]:
    _authorize(d, c, READ)
    return {"webKeys": [_web_key(k) for k in d.web_keys.all()]}


HANDLERS = {"CreateWebKey": _create, "ActivateWebKey": _activate, "DeleteWebKey": _delete,
            "ListWebKeys": _list}


def invoke(domain: Domain, method: str, headers: Mapping[str, str],
           req: dict[str, Any]) -> dict[str, Any]:
    """After unmarshal: authentication -> PGV -> handler (permission, rules)."""
    from tests.emulator import pgv, wire

    caller = domain.authenticate(headers.get("authorization"), headers.get("x-zitadel-orgid"))
    found = wire.service_method(SERVICE, method)
    assert found is not None, method
    pgv.validate(found.input_type, req)
    return dict(clean(HANDLERS[method](domain, caller, req)))


def exists(method: str) -> bool:
    return method in HANDLERS


def _types(method: str) -> tuple[str, str]:
    from tests.emulator import wire

    found = wire.service_method(SERVICE, method)
    assert found is not None, method
    return str(found.input_type.full_name), str(found.output_type.full_name)


def decode_proto(method: str, body: bytes) -> dict[str, Any]:
    from google.protobuf.message import DecodeError

    from tests.emulator import wire

    try:
        return wire.parse(_types(method)[0], body)
    except DecodeError as exc:
        raise EmuError("invalid_argument",
                       "unmarshal message: proto: cannot parse invalid wire-format data") \
            from exc


def encode_proto(method: str, result: dict[str, Any]) -> bytes:
    from tests.emulator import wire

    return wire.from_json_dict(_types(method)[1], result)


def handle(domain: Domain, method: str, http_method: str, headers: Mapping[str, str],
           body: bytes) -> tuple[int, dict[str, str], bytes]:
    """Connect unary (JSON or proto codec), as connect_v2.handle for the UserService."""
    from tests.emulator import connect_v2, wire
    from tests.emulator.protojson import schema_of

    if not exists(method):
        return connect_v2.not_found()
    codec = connect_v2.Codec(decode_proto=decode_proto,
                             json_schema=lambda m: schema_of(wire.descriptor_of(_types(m)[0])),
                             invoke=invoke, encode_proto=encode_proto)
    return connect_v2.serve_unary(domain, method, http_method, headers, body, codec=codec)


__all__ = ["SERVICE", "EmuError", "KeyConfig", "WebKey", "WebKeys", "exists", "invoke"]
