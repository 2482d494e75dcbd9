"""Python client for ltrr: sync (``LtrrClient``) and asyncio (``AsyncLtrrClient``)."""

from ltrr_client.client import AsyncLtrrClient, LtrrClient, actions, namespaces

__all__ = ["AsyncLtrrClient", "LtrrClient", "actions", "namespaces"]
