"""Scrub server text of anything secret before it goes into an error message.

A server's error text (an OAuth ``error_description``, a Connect or gRPC
message, a Vault error) is useful to an operator, but a front, proxy or
misbehaving server may echo the request back into it: the assertion, the
bearer token, the PAT being verified, a client secret, a Vault token, a
key's PEM.  Every message built from server text goes through
:func:`redact` first, with the values the rotator sent in that request, and
only then is cut to length (cutting first could split a secret so that the
exact match below misses its head).

Three layers, because a server may echo a secret whole, encoded or cut:

- every value the caller says it sent, as is and in the encodings an echo
  typically shows (form/URL-encoded, JSON-escaped);
- any 16+ characters in a row that also occur in such a value (an echo
  cut short, or run together with other text);
- shapes that are never legitimate in an error message whatever was sent:
  JWTs, PEM blocks (even cut off), ``Bearer <token>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"

#: Shorter values are not searched for: they would garble ordinary words and
#: cannot be a real credential (tokens, assertions and keys are far longer).
MIN_SECRET_LENGTH = 6
#: A run of token characters at least this long that occurs inside a secret is an echo.
MIN_FRAGMENT_LENGTH = 16

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?")
# A PEM block, or its head when the echo was cut before the END line.  The
# body may show its line breaks raw, JSON-escaped (\n) or URL-encoded (%0A).
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_PEM_ENCODED = re.compile(
    r"-{5}BEGIN(?:\+|%20)[A-Z0-9+%]+?-{5}.*?(?:-{5}END(?:\+|%20)[A-Z0-9+%]+?-{5}|\Z)", re.DOTALL
)
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20|\+)[^\s\"',;]+")


def _forms(secret: str) -> set[str]:
    """``secret`` and how it looks echoed from a form body, a URL or a JSON document."""
    return {
        secret,
        quote_plus(secret),
        quote(secret, safe=""),
        json.dumps(secret)[1:-1],
    }


def _fragments_removed(text: str, forms: set[str]) -> str:
    """``text`` with every stretch made of ``MIN_FRAGMENT_LENGTH``-grams of ``forms`` replaced."""
    n = MIN_FRAGMENT_LENGTH
    grams = {form[i : i + n] for form in forms for i in range(len(form) - n + 1)}
    hidden = [False] * len(text)
    for i in range(len(text) - n + 1):
        if text[i : i + n] in grams:
            hidden[i : i + n] = [True] * n
    out: list[str] = []
    for i, char in enumerate(text):
        if not hidden[i]:
            out.append(char)
        elif i == 0 or not hidden[i - 1]:
            out.append(REDACTED)
    return "".join(out)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every ``secrets`` value (and every secret-shaped string) replaced.

    ``None`` and short values in ``secrets`` are ignored, so callers may pass
    whatever they sent without checking it first.
    """
    forms: set[str] = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            forms |= _forms(secret)
    # Longest first: a secret's encoded form may contain a shorter secret.
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    if forms:
        text = _fragments_removed(text, forms)
    text = _PEM.sub(REDACTED, text)
    text = _PEM_ENCODED.sub(REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def server_text(text: str, secrets: Iterable[str | None] = (), *, limit: int = 200) -> str:
    """A server's message fit for an error: redacted first, then cut to ``limit``."""
    clean = redact(text, secrets)
    return clean if len(clean) <= limit else clean[:limit] + "..."
