"""The one exception type of the emulator's domain layer."""

from __future__ import annotations

import re

_TRAILING_ID = re.compile(r"^(?P<text>.*) \((?P<id>[A-Za-z0-9]+-[A-Za-z0-9]+)\)$", re.DOTALL)


class EmuError(Exception):
    """A ZITADEL-style error.

    ``code``: snake_case gRPC/Connect status name (``not_found``,
    ``failed_precondition``, ``permission_denied``, ``unauthenticated``,
    ``invalid_argument``, ``resource_exhausted``, ``unavailable``, ``internal``,
    ``deadline_exceeded``, ``unimplemented``, ...).
    ``message``: the exact message ZITADEL puts on the wire, e.g.
    ``"Machine key not found (COMMAND-4m77G)"``.
    ``detail_id``: the ``zitadel.v1.ErrorDetail.id`` (e.g. ``COMMAND-4m77G``) or
    None when ZITADEL attaches no detail (PGV validation, auth-header errors).
    ``detail_message``: ``ErrorDetail.message``; by default the message
    without its trailing ``" (<ID>)"``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        detail_id: str | None = None,
        detail_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail_id = detail_id
        if detail_message is None and detail_id is not None:
            m = _TRAILING_ID.match(message)
            detail_message = m.group("text") if m and m.group("id") == detail_id else message
        self.detail_message = detail_message

    def __repr__(self) -> str:
        return f"EmuError({self.code!r}, {self.message!r}, {self.detail_id!r})"


def zerr(code: str, text: str, detail_id: str) -> EmuError:
    """``zerr("not_found", "Machine key not found", "COMMAND-4m77G")`` ->
    message ``"Machine key not found (COMMAND-4m77G)"`` with that detail."""
    return EmuError(code, f"{text} ({detail_id})", detail_id, text)
