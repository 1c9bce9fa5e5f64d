"""The cause chain of an error, fit to print under ``--debug``.

An error's own message is worded for the operator and vetted for secrets;
what lies beneath it (urllib3's ``MaxRetryError``, an ``ssl`` error, an
``OSError`` with its errno) is not.  ``--debug`` shows that chain anyway,
one line per exception, because it is what tells a TLS interception proxy
from a wrong port; each line is scrubbed first:

* every URL becomes its address (``scheme://host:port``): a path or query
  may carry a secret (a webhook URL's token), and urllib3 quotes the path;
* :func:`rotator.redact.redact` removes JWTs, PEM blocks and bearer tokens;
* each line is cut to :data:`LIMIT` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from rotator import netcause
from rotator.redact import redact

#: Longest message shown for one link of the chain.
LIMIT = 300

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()]+")
#: urllib3 quotes the request path on its own: ``... with url: /v1/secret/... (Caused by``.
_URL_PATH = re.compile(r"(with url: )\S+")


def scrub(text: str) -> str:
    """``text`` with URLs reduced to their address, secrets redacted, cut to :data:`LIMIT`."""
    text = _URL.sub(lambda m: netcause.address(m.group(0)), text)
    text = _URL_PATH.sub(r"\1[path]", text)
    text = " ".join(redact(text).split())
    return text if len(text) <= LIMIT else text[:LIMIT] + "..."


def links(exc: BaseException) -> Iterator[BaseException]:
    """What ``exc`` wraps, outermost first, without ``exc`` itself."""
    chain = netcause.chain(exc)
    next(chain)
    yield from chain


def describe(exc: BaseException) -> str:
    """``module.Type: message`` of one link, scrubbed."""
    kind = type(exc)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    message = scrub(str(exc))
    return f"{name}: {message}" if message else name


def cause_lines(exc: BaseException) -> list[str]:
    """One ``caused by: ...`` line per link under ``exc`` (none when it wraps nothing)."""
    return [f"caused by: {describe(link)}" for link in links(exc)]
