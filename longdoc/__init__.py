"""Client side of the longdoc service: `longdoc.client.Client` / `AsyncClient` and the `longdoc classify` command."""

from longdoc.client import (
    APIError,
    AsyncClient,
    Chunk,
    Classification,
    Client,
    DecisiveChunk,
    LabelScore,
    ServiceInfo,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "Chunk",
    "Classification",
    "Client",
    "DecisiveChunk",
    "LabelScore",
    "ServiceInfo",
]
