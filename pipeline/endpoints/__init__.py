"""The endpoints a job line may name, one object each: the only place that knows an endpoint's URL.

    endpoint = by_url(row.url)            # or by_name("chat"), the --endpoint shorthand
    endpoint.validate(body, base_dir)     # "body.messages: required", or None
    endpoint.parse(answer)                # Parsed, or what the answer lacks

Each endpoint is a module (base.py says what every endpoint answers, with defaults): chat.py,
completions.py, audio.py (transcriptions and translations), embeddings.py (vectors.py: how their vectors
are stored), responses.py, moderations.py. Adding one is a module here plus its handler
in the fake API (pipeline/fakeapi/); no other module names an endpoint's URL (tests/test_endpoints.py
holds the package to that).
"""

from __future__ import annotations

from pipeline.endpoints.audio import Audio
from pipeline.endpoints.base import Endpoint, Parsed
from pipeline.endpoints.chat import Chat
from pipeline.endpoints.completions import Completions
from pipeline.endpoints.embeddings import Embeddings
from pipeline.endpoints.moderations import Moderations
from pipeline.endpoints.responses import Responses
from pipeline.errors import ConfigError

__all__ = ["BY_URL", "ENDPOINTS", "Endpoint", "Parsed", "by_name", "by_url"]

#: Every endpoint, by shorthand name.
ENDPOINTS: dict[str, Endpoint] = {
    e.name: e
    for e in (
        Chat("chat", "/v1/chat/completions"),
        Completions("completions", "/v1/completions"),
        Audio("transcriptions", "/v1/audio/transcriptions"),
        Audio("translations", "/v1/audio/translations", translate=True),
        Embeddings("embeddings", "/v1/embeddings"),
        Responses("responses", "/v1/responses"),
        Moderations("moderations", "/v1/moderations"),
    )
}
#: Every endpoint, by url.
BY_URL: dict[str, Endpoint] = {e.url: e for e in ENDPOINTS.values()}


def by_name(name: str) -> Endpoint:
    """The endpoint of an `--endpoint` shorthand; ConfigError for an unknown one."""
    found = ENDPOINTS.get(name)
    if found is None:
        raise ConfigError(f"unknown endpoint {name!r} (expected one of {', '.join(ENDPOINTS)})")
    return found


def by_url(url: str) -> Endpoint:
    """The endpoint of a stored row's url (a KeyError for a url no endpoint has: intake never stores one)."""
    return BY_URL[url]
