"""FocalServe Python client and the HTTP API schemas shared with the server.

    from focalserve_client import Client

    with Client("http://127.0.0.1:8000") as client:
        vectors = client.embed(["cat.jpg", "car.jpg"], "what colour is it?")  # float32 (2, D)

Depends on httpx, pydantic and numpy only; Pillow is used when present (PIL images, numpy
arrays) and tqdm for progress bars.
"""

from focalserve_client.client import DEFAULT_MAX_INPUTS, AsyncClient, Client
from focalserve_client.errors import (
    ConditionFailedError,
    ConnectionError,
    FocalServeError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    ServerError,
    TimeoutError,
)
from focalserve_client.schemas import (
    CollectionInfo,
    ConditionInfo,
    ItemInfo,
    ModelInfo,
    SearchResponse,
    SearchResult,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_INPUTS",
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "ConditionFailedError",
    "ConditionInfo",
    "ConnectionError",
    "FocalServeError",
    "InvalidRequestError",
    "ItemInfo",
    "ModelInfo",
    "NotFoundError",
    "OverloadedError",
    "SearchResponse",
    "SearchResult",
    "ServerError",
    "TimeoutError",
]
