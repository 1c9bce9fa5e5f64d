"""Moved: data in :mod:`rotator.model`, the protocol in :mod:`rotator.ports`."""

from rotator.model import Credential, CredentialKind, IssuedPat, User
from rotator.ports import ZitadelTransport

__all__ = ["Credential", "CredentialKind", "IssuedPat", "User", "ZitadelTransport"]
