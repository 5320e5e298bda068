"""A local fake of the OpenAI API over real HTTP, for integration tests, benchmarks and the demo.

Endpoints (OpenAI's protocol: bodies, error shapes and headers):

    POST /v1/chat/completions        answers "echo: <last user message>"   (_chat.py)
    POST /v1/completions             answers "echo: <prompt>", one choice per prompt x n
    POST /v1/audio/transcriptions    "transcript of <sha256(file)[:8]>"     (_audio.py)
    POST /v1/audio/translations      "translation of <sha256(file)[:8]>"
    POST /v1/embeddings              float32 vectors seeded by model, dimensions and input (_embeddings.py)
    POST /v1/responses               a response whose output_text is "echo: <last user text>" (_responses.py)
    POST /v1/moderations             results flagged by keywords, scores from the text (_moderations.py)

The Batch API (OpenAI's protocol, kept in memory; details in _files.py, _batches.py, _batch_lines.py):

    POST   /v1/files                   upload: multipart `purpose` (batch, ...) and `file`
    GET    /v1/files                   list: ?purpose= &limit= (1..10,000) &after= &order=asc|desc
    GET    /v1/files/{id}              retrieve
    GET    /v1/files/{id}/content      the bytes
    DELETE /v1/files/{id}              delete
    POST   /v1/batches                 create: {input_file_id, endpoint, completion_window "24h", metadata}
    GET    /v1/batches                 list, newest first: ?limit= (1..100, default 20) &after=
    GET    /v1/batches/{id}            retrieve
    POST   /v1/batches/{id}/cancel     cancel

A batch is `validating` when created; its input file is checked line by line (one model per file, line
format, duplicate custom_ids, at most `batch_max_lines` lines) and, with `batch_token_limit` set, against
the tokens of its model's batches in progress: problems make it `failed`, with `errors.data[]` entries
{code, message, param, line}. Otherwise it is `in_progress` for `batch_seconds`, `finalizing` while each
line is answered by the same code that answers a direct request (so a line's directive works, e.g.
fake:{"status": 400} puts that line in the error file with a 400), and ends `completed`, or `expired`
when some lines (a share `batch_expire_rate`) expired with `batch_expired`. The output file holds the
2xx answers, the error file the HTTP errors and expired lines, both in shuffled order. Creating refuses at
once: an unknown file (404), a file over `batch_max_bytes` (400 "File is too large."), another endpoint
or completion window, metadata over 16 string pairs. `batch_delays` ({operation: seconds}) makes an
operation wait after it is done and before it is answered, so a test can kill a client that has uploaded
a file or created a batch but not yet learned its id. The Batch API takes no quota and no rate limit.

Every /v1 request passes, in order: auth -> hang / 5xx injection -> quota -> rate limit ->
validation -> directive -> latency -> answer. Rate-limit and quota refusals are not successes, and a
request the limiter refuses takes nothing from its bucket. Every /v1 answer carries
`x-request-id: req_<hex>` (unless a directive sets another), `openai-processing-ms`, and the
`x-ratelimit-*` headers of the limits that are set. Limits are enforced in buckets of `window`
seconds; `x-ratelimit-remaining-*` is what the current bucket has left scaled to a minute,
`x-ratelimit-reset-*` the time until the meter is idle (details: _limits.py).

Directives (_directives.py): a test picks the answer of each request from the job file. A prompt
that starts with "fake:" is a directive, and the rest must be a JSON object, e.g.
fake:{"body": "html", "times": 2}. The prompt is the last user message of a chat request when its
content is a string, the `prompt` of a legacy completion when it is a string (not a list), the
`prompt` form field of an audio upload, the last user message (or the string `input`) of a response,
or the first input of embeddings or moderations when it is a string (no `content` or `pad` for them).
Keys, all optional:

    "model": str          the answer's `model` field (chat, completions; refused for audio)
    "request_id": str     the answer's x-request-id header (no control characters)
    "content": str        the answer text, any characters ("\\u0000" too): every choice's message
                          content (a forced call's arguments), completion text, or transcript text
    "pad": int            the answer text's exact length: filled with "." or cut (0..100,000,000)
    "status": int         answer this HTTP error (400..599) with an OpenAI error body
    "code", "type", "message": str
                          the error body's fields; alone they mean status 400. Defaults: code null;
                          type server_error (5xx) or invalid_request_error; a message saying so
    "body": str           answer 200 with a body that is not an answer:
                            "empty"         no bytes, application/json
                            "truncated"     the first half of the real answer's bytes
                            "html"          a captive-portal sign-in page, text/html
                            "empty_object"  {}
                            "error"         {"error": {...}}, from code/type/message (default: the 500 error)
                            "not_json"      plain text under application/json
                          (not with "status"; code/type/message only with "error")
    "times": int          in force for the first `times` receipts of this exact request body only
                          (counted as stats.bodies counts "received", refusals included; a reset
                          starts again), then the request is answered as if it had no directive
    "latency": float      seconds to wait before answering, errors and bad bodies too (a success
                          also waits the configured latency)

A directive applies once auth, faults, quota, rate limits and validation have let its request through,
and to its own answer only. A malformed directive (unknown key, wrong type or range, contradictory keys,
"fake:" not followed by a JSON object) is refused 400 with code "invalid_fake_directive" and a message
naming the problem. Directed text is never cut by max_tokens, each of the n choices gets it, it finishes
"stop", and usage counts it like any text; the TPM estimate ignores directives. Directed errors are not
successes (they count by status in the stats and take no quota); a 200 with a bad body is answered
2xx, so it counts as answered and against the quota.

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
     "bodies": {fingerprint: {"received": n, "answered": n}},
     "projects": {openai_project_header: n},      requests that named an OpenAI-Project
     "usage": {"prompt_tokens": n, "completion_tokens": n},   what the 2xx answers' usage reported
                               (direct answers and Batch API lines; audio billed by the second: none)
     "batch_api": {
        "calls": {operation: n},   Batch API calls received, by operation (upload, list_files,
                                   retrieve_file, file_content, delete_file, create, list, retrieve, cancel)
        "uploaded": [filename],    one entry per file stored by an upload
        "created": [{"id", "metadata"}],   one entry per batch created
        "cancelled": [batch id],   one entry per cancel that moved a batch to cancelling
        "lines": {"answered": n, "expired": n}}}

Batch lines count in `bodies` as direct requests do (processed = received, 2xx = answered), never in
`received`, `answered` or `by_status`, which count HTTP requests to the answering endpoints.

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
