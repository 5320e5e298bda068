"""A local fake of the OpenAI API over real HTTP, for integration tests, benchmarks and the demo.

Endpoints (OpenAI's protocol: bodies, error shapes and headers):

    POST /v1/chat/completions        answers "echo: <last user message>"   (_chat.py)
    POST /v1/completions             answers "echo: <prompt>", one choice per prompt x n
    POST /v1/audio/transcriptions    "transcript of <sha256(file)[:8]>"     (_audio.py)
    POST /v1/audio/translations      "translation of <sha256(file)[:8]>"

Every /v1 request passes, in order: auth -> hang / 5xx injection -> quota -> rate limit ->
validation -> latency -> answer. Rate-limit and quota refusals are not successes, and a request the
limiter refuses takes nothing from its bucket. Every /v1 answer carries `x-request-id: req_<hex>`,
`openai-processing-ms`, and the `x-ratelimit-*` headers of the limits that are set. Limits are
enforced in buckets of `window` seconds; `x-ratelimit-remaining-*` is what the current bucket has
left scaled to a minute, `x-ratelimit-reset-*` the time until the meter is idle (details: _limits.py).

Control, not part of OpenAI's API:

    GET  /_fake/stats     the stats below (also FakeServer.stats())
    GET  /_fake/config    the live config (API key masked)
    POST /_fake/config    JSON object of FakeConfig fields to change, e.g. {"quota": null}; unknown
                          fields or bad values are refused 400 and change nothing
    POST /_fake/reset     zero the stats, the quota count and the rate-limit meters

Stats:

    {"received": n,            requests to /v1 (any path, any outcome, cancelled ones too)
     "answered": n,            answered 2xx
     "by_status": {"200": n, "429": n, ...},
     "in_flight": n,           being handled now
     "max_in_flight": n,       high-water mark of in_flight since start or reset
     "bodies": {fingerprint: {"received": n, "answered": n}}}

A fingerprint identifies a request's content: for JSON requests, the sha256 hex of the raw body bytes
(a batch line's custom_id is never in the body, so the same request sent twice has one fingerprint);
for audio uploads, the sha256 of the file bytes, a newline, then the sorted-key JSON of
{"fields": {every other form field}, "filename": the file's name}.

Models: by default every model exists except "does-not-exist". With `FakeConfig.models` set (a list of
names, also settable live: POST /_fake/config {"models": ["gpt-4o-mini"]}), a chat, completion or audio
request naming any other model gets OpenAI's 404 model_not_found, once the rest of the request is valid.

The quota counts successful answers since start or reset, including those answered while no quota
was set: `quota=0` refuses everything from then on, `quota=None` lets everything through again.
"""

from ._app import make_app
from ._config import FakeConfig
from ._server import FakeServer, serve

__all__ = ["FakeConfig", "FakeServer", "make_app", "serve"]
