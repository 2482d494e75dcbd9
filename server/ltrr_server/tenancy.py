"""Tenants: every policy and model belongs to one, and a caller sees only its own tenant's.

The server keeps one namespace of names and gives each tenant its part: ``<tenant>/<name>`` (the
default tenant's names as they always were). Clients send and see only ``<name>``: the API layer
qualifies what comes in with the caller's tenant (``inside``) and strips what goes out
(``outside``). A name holding "/" from a client is simply not found, so no tenant can reach into
another's part, and another tenant's policy is NOT_FOUND exactly like one that does not exist.
Events belong to their policy's tenant: a reward for another tenant's event is an unknown event.

>>> inside("team-a", "search", "policy"), inside("default", "search", "policy")
('team-a/search', 'search')
>>> outside("team-a/search"), tenant_of("team-a/search"), tenant_of("search")
('search', 'team-a', 'default')
>>> inside("default", "team-a/search", "policy")
Traceback (most recent call last):
...
ltrr_server.errors.NotFound: policy: no policy 'team-a/search'
"""

from __future__ import annotations

from ltrr_server.bounds import ID_CHARS
from ltrr_server.errors import NotFound

SEP = "/"
DEFAULT_TENANT = "default"
# Characters of a name on the server: a tenant's (a name) "/" and the client's name.
INSIDE_CHARS = 2 * ID_CHARS + 1


def inside(tenant: str, name: str, field: str, what: str = "policy") -> str:
    """The server's name for a client's ``name`` (an empty one stays empty: its field says so)."""
    if SEP in name:
        raise NotFound(f"{field}: no {what} {name!r}", field=field)
    if not name or tenant == DEFAULT_TENANT:
        return name
    return f"{tenant}{SEP}{name}"


def outside(name: str) -> str:
    """The name a client of the name's own tenant knows."""
    return name.rpartition(SEP)[2]


def tenant_of(name: str) -> str:
    """The tenant a server-side name belongs to."""
    head, sep, _ = name.rpartition(SEP)
    return head if sep else DEFAULT_TENANT


def owned(tenant: str, name: str) -> bool:
    return tenant_of(name) == tenant
