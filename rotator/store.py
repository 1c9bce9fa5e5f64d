"""Moved: :class:`StoredSecret` to :mod:`rotator.model`, the protocol to :mod:`rotator.ports`."""

from rotator.model import StoredSecret
from rotator.ports import SecretStore

__all__ = ["SecretStore", "StoredSecret"]
