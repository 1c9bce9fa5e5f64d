"""The slice of the ``zitadel-client`` SDK the v2 transport uses, without the rest.

``import zitadel_client`` (or any of its submodules) runs the package's
``__init__``, which imports every one of its ~1,350 pydantic models and ~30
service APIs: about 4 s of CPU and ~100 MB, of which the rotator uses a few
dozen models.  :func:`load_slice` registers ``zitadel_client`` and its
``models`` and ``api`` subpackages *without running their ``__init__``*, so
that importing ``zitadel_client.api_client`` or
``zitadel_client.models.user_service_add_key_request`` loads just those
modules and what they import themselves.

Nothing is lost for other code in the same process: the first lookup of a
name such a package does not have yet (``from zitadel_client import Zitadel``,
``import *``) runs the package's real ``__init__`` in place, so the package
ends up exactly as a normal import would have made it, with the same class
objects.  If the SDK was imported normally before, this does nothing.

Tied to the layout of the pinned SDK version (``zitadel-client==4.1.9`` in
pyproject.toml); tests/test_startup.py checks both the slice and the fallback.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

#: Packages whose ``__init__`` imports everything below them.
_HEAVY_PACKAGES = ("zitadel_client", "zitadel_client.models", "zitadel_client.api")
_lock = threading.RLock()  # re-entrant: completing one package completes the others


def load_slice() -> None:
    """Make ``zitadel_client``'s heavy packages importable without their ``__init__``
    (nothing to do if the SDK is imported already, whole or sliced)."""
    with _lock:
        if _HEAVY_PACKAGES[0] in sys.modules:
            return
        for name in _HEAVY_PACKAGES:
            sys.modules[name] = _package_without_init(name)


def _package_without_init(name: str) -> ModuleType:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package", name=name)
    loader = spec.loader
    # __path__, __spec__ and __file__ are set; the body is not run.
    package = importlib.util.module_from_spec(spec)

    completed = False

    def complete(attribute: str) -> Any:
        # PEP 562: only called for a name the package lacks.
        nonlocal completed
        submodule = f"{name}.{attribute}"
        if not attribute.startswith("_") and importlib.util.find_spec(submodule) is not None:
            # ``from zitadel_client import rest`` asks the package first: a submodule
            # is imported by itself, as for any package.
            return importlib.import_module(submodule)
        # Someone wants more than the slice: run the real __init__ now, once, in place.
        with _lock:
            if not completed:
                completed = True  # before running it: the __init__ looks itself up
                loader.exec_module(package)
        try:
            return package.__dict__[attribute]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}") from None

    package.__getattr__ = complete  # type: ignore[method-assign]
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)
    return package


load_slice()

# What the v2 transport uses, each from its own module (after load_slice(): so
# that these load only themselves and what they import).
from zitadel_client.api_client import ApiClient  # noqa: E402
from zitadel_client.auth.personal_access_token_authenticator import (  # noqa: E402
    PersonalAccessTokenAuthenticator,
)
from zitadel_client.configuration import Configuration  # noqa: E402
from zitadel_client.exceptions import ApiError  # noqa: E402
from zitadel_client.models.user_service_add_key_request import (  # noqa: E402
    UserServiceAddKeyRequest,
)
from zitadel_client.models.user_service_add_personal_access_token_request import (  # noqa: E402
    UserServiceAddPersonalAccessTokenRequest,
)
from zitadel_client.models.user_service_add_secret_request import (  # noqa: E402
    UserServiceAddSecretRequest,
)
from zitadel_client.models.user_service_get_user_by_id_request import (  # noqa: E402
    UserServiceGetUserByIDRequest,
)
from zitadel_client.models.user_service_id_filter import UserServiceIDFilter  # noqa: E402
from zitadel_client.models.user_service_key_field_name import (  # noqa: E402
    UserServiceKeyFieldName,
)
from zitadel_client.models.user_service_keys_search_filter import (  # noqa: E402
    UserServiceKeysSearchFilter,
)
from zitadel_client.models.user_service_list_keys_request import (  # noqa: E402
    UserServiceListKeysRequest,
)
from zitadel_client.models.user_service_list_personal_access_tokens_request import (  # noqa: E402
    UserServiceListPersonalAccessTokensRequest,
)
from zitadel_client.models.user_service_list_query import UserServiceListQuery  # noqa: E402
from zitadel_client.models.user_service_list_users_request import (  # noqa: E402
    UserServiceListUsersRequest,
)
from zitadel_client.models.user_service_login_name_query import (  # noqa: E402
    UserServiceLoginNameQuery,
)
from zitadel_client.models.user_service_organization_id_query import (  # noqa: E402
    UserServiceOrganizationIdQuery,
)
from zitadel_client.models.user_service_pagination_request import (  # noqa: E402
    UserServicePaginationRequest,
)
from zitadel_client.models.user_service_personal_access_token_field_name import (  # noqa: E402
    UserServicePersonalAccessTokenFieldName,
)
from zitadel_client.models.user_service_personal_access_tokens_search_filter import (  # noqa: E402
    UserServicePersonalAccessTokensSearchFilter,
)
from zitadel_client.models.user_service_remove_key_request import (  # noqa: E402
    UserServiceRemoveKeyRequest,
)
from zitadel_client.models.user_service_remove_personal_access_token_request import (  # noqa: E402
    UserServiceRemovePersonalAccessTokenRequest,
)
from zitadel_client.models.user_service_remove_secret_request import (  # noqa: E402
    UserServiceRemoveSecretRequest,
)
from zitadel_client.models.user_service_search_query import UserServiceSearchQuery  # noqa: E402
from zitadel_client.models.user_service_text_query_method import (  # noqa: E402
    UserServiceTextQueryMethod,
)
from zitadel_client.models.user_service_type import UserServiceType  # noqa: E402
from zitadel_client.models.user_service_type_query import UserServiceTypeQuery  # noqa: E402
from zitadel_client.models.user_service_user import UserServiceUser  # noqa: E402
from zitadel_client.models.user_service_user_name_query import (  # noqa: E402
    UserServiceUserNameQuery,
)
from zitadel_client.models.user_service_user_state import UserServiceUserState  # noqa: E402
from zitadel_client.transport_options import TransportOptions  # noqa: E402

__all__ = [
    "ApiClient",
    "ApiError",
    "Configuration",
    "PersonalAccessTokenAuthenticator",
    "TransportOptions",
    "UserServiceAddKeyRequest",
    "UserServiceAddPersonalAccessTokenRequest",
    "UserServiceAddSecretRequest",
    "UserServiceGetUserByIDRequest",
    "UserServiceIDFilter",
    "UserServiceKeyFieldName",
    "UserServiceKeysSearchFilter",
    "UserServiceListKeysRequest",
    "UserServiceListPersonalAccessTokensRequest",
    "UserServiceListQuery",
    "UserServiceListUsersRequest",
    "UserServiceLoginNameQuery",
    "UserServiceOrganizationIdQuery",
    "UserServicePaginationRequest",
    "UserServicePersonalAccessTokenFieldName",
    "UserServicePersonalAccessTokensSearchFilter",
    "UserServiceRemoveKeyRequest",
    "UserServiceRemovePersonalAccessTokenRequest",
    "UserServiceRemoveSecretRequest",
    "UserServiceSearchQuery",
    "UserServiceTextQueryMethod",
    "UserServiceType",
    "UserServiceTypeQuery",
    "UserServiceUser",
    "UserServiceUserNameQuery",
    "UserServiceUserState",
    "load_slice",
]
