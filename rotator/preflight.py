"""``rotator validate``'s local checks: the files the configuration names,
read and parsed as the rotator will use them, without the network.

* the rotator's own key file (``zitadel.credentials.key_file``): readable,
  JSON, the fields of a ZITADEL key file, a PEM RSA private key;
* CA bundles (``zitadel.tls.ca_file``, ``vault.ca_file``): readable, at least
  one PEM certificate;
* Vault auth files (``token_file``, ``role_id_file``, ``secret_id_file``,
  ``jwt_file`` for the method in use): readable and not empty.

Every problem is a configuration error (exit 2), whatever is wrong with the
file.  A message names the field and the file, never the file's content.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from rotator.config import Config
from rotator.errors import InvalidKeyFile
from rotator.keys import check_key_file


@dataclass(frozen=True)
class Check:
    #: The configuration field naming the file.
    field: str
    path: str
    #: None: the file is fine; else what is wrong with it.
    problem: str | None = None
    #: A problem that may not be one where the rotator runs (the service
    #: account token exists only inside a pod): reported, not an error.
    warning_only: bool = False

    @property
    def ok(self) -> bool:
        return self.problem is None


def _read(path: str) -> tuple[str | None, str | None]:
    """The file's text, or why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8"), None
    except FileNotFoundError:
        return None, "does not exist"
    except IsADirectoryError:
        return None, "is a directory, not a file"
    except PermissionError:
        return None, "is not readable by this user"
    except UnicodeDecodeError:
        return None, "is not text (UTF-8)"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"


def key_file_problem(path: str) -> str | None:
    """What is wrong with the rotator's own key file; None if it is usable."""
    text, problem = _read(path)
    if text is None:
        return problem
    try:
        data = json.loads(text)
    except ValueError:
        return "is not JSON (a ZITADEL key file, as downloaded, is a JSON object)"
    if not isinstance(data, dict):
        return "is not a JSON object"
    try:
        check_key_file(data)
    except InvalidKeyFile as exc:
        return str(exc)
    return None


def ca_file_problem(path: str) -> str | None:
    """What is wrong with a CA bundle; None if it holds a PEM certificate."""
    text, problem = _read(path)
    if text is None:
        return problem
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("ascii", "replace"))
    except ValueError:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return None if certificates else "holds no PEM certificate"


def plain_file_problem(path: str) -> str | None:
    text, problem = _read(path)
    if text is None:
        return problem
    return "is empty" if not text.strip() else None


def local_checks(config: Config) -> list[Check]:
    """Every file ``config`` names, checked; fine ones included (``validate --json``)."""
    checks: list[Check] = []

    def check(
        field: str, path: str | None, probe: Callable[[str], str | None], *, warn: bool = False
    ) -> None:
        if path is not None:
            checks.append(Check(field, path, probe(path), warning_only=warn))

    check("zitadel.credentials.key_file", config.zitadel.credentials.key_file, key_file_problem)
    check("zitadel.tls.ca_file", config.zitadel.tls.ca_file, ca_file_problem)
    check("vault.ca_file", config.vault.ca_file, ca_file_problem)
    auth = config.vault.auth
    if auth.method == "token":
        check("vault.auth.token_file", auth.token_file, plain_file_problem)
    elif auth.method == "approle":
        check("vault.auth.role_id_file", auth.role_id_file, plain_file_problem)
        check("vault.auth.secret_id_file", auth.secret_id_file, plain_file_problem)
    elif auth.method == "kubernetes":
        check("vault.auth.jwt_file", auth.jwt_file, plain_file_problem, warn=True)
    return checks
