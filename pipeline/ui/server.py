"""`pipeline ui`: the web view served by aiohttp from the database the other commands open.

Routes (every `/api/...` answer is the JSON the page draws, for scripts too):

    GET  /                                   the page (static/index.html; the views are routed in app.js)
    GET  /static/{name}                      app.js, charts.js, style.css
    GET  /api/session                        {"actions": bool, "csrf": token for POSTs}
    GET  /api/batches                        batches (state, counts, cost, cap, priority, share), accounts
    GET  /api/batches/{id}                   status --json's report, charts, finish reasons, failures
    GET  /api/batches/{id}/rows?status=&error_type=&finish_reason=&model=&search=&after=&limit=
    GET  /api/batches/{id}/rows/{row}        one request: body, answer, every attempt
    POST /api/batches/{id}/{action}          cancel | retry | resume | priority ({"priority": n}), with
                                             --allow-actions only (security.py)

Queries run in threads (`asyncio.to_thread`), so a slow one never holds the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import orjson
from aiohttp import web

from pipeline.errors import BatchNotFound, ConfigError, PipelineError
from pipeline.prices import PriceTable
from pipeline.settings import Settings
from pipeline.store import batches
from pipeline.store.db import Database
from pipeline.ui import actions, data, rows
from pipeline.ui.security import CSRF_HEADER, Guard, middleware

T = TypeVar("T")

#: The page's files, shipped as package data, and their content types.
STATIC = {
    "app.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
}


def asset(name: str) -> str:
    """A file of the page (index.html, app.js, charts.js, style.css), from the installed package."""
    return resources.files("pipeline.ui").joinpath("static", name).read_text(encoding="utf-8")


@dataclass
class Context:
    db: Database
    prices: PriceTable
    settings: Settings
    guard: Guard


CONTEXT = web.AppKey("context", Context)


def make_app(db: Database, prices: PriceTable, settings: Settings, guard: Guard) -> web.Application:
    """The web view's aiohttp application."""
    app = web.Application(middlewares=[middleware(guard)])
    app[CONTEXT] = Context(db, prices, settings, guard)
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/favicon.ico", _no_icon)
    app.router.add_get("/api/session", _session)
    app.router.add_get("/api/batches", _batches)
    app.router.add_get("/api/batches/{batch}", _batch)
    app.router.add_get("/api/batches/{batch}/rows", _rows)
    app.router.add_get("/api/batches/{batch}/rows/{row}", _row)
    app.router.add_post("/api/batches/{batch}/{action}", _action)
    return app


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=asset("index.html"), content_type="text/html")


async def _no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(text=asset(name), content_type=STATIC[name])


async def _session(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    sid = ctx.guard.session_of(request)
    return _json({"actions": ctx.guard.allow_actions, "csrf": ctx.guard.csrf_for(sid) if sid else None})


async def _batches(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    return _json(await _run(data.batches_page, ctx.db, ctx.prices))


async def _batch(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]

    def page() -> dict[str, Any]:
        return data.batch_page(ctx.db, _find(ctx.db, request.match_info["batch"]), ctx.prices)

    return _json(await _run(page))


async def _rows(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    query = dict(request.query)
    after, limit = _int(query.get("after"), 0), _int(query.get("limit"), rows.PAGE_ROWS)
    filt = rows.RowFilter.from_query(query)

    def page() -> dict[str, Any]:
        batch = _find(ctx.db, request.match_info["batch"])
        return rows.rows_page(ctx.db, batch.id, filt, after, limit)

    return _json(await _run(page))


async def _row(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    row_id = _int(request.match_info["row"], -1)

    def detail() -> dict[str, Any] | None:
        return rows.row_detail(ctx.db, _find(ctx.db, request.match_info["batch"]).id, row_id)

    found = await _run(detail)
    if found is None:
        raise web.HTTPNotFound(text="no such row in this batch")
    return _json(found)


async def _action(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")

    def act() -> dict[str, Any]:
        batch = _find(ctx.db, request.match_info["batch"])
        return actions.act(ctx.settings, ctx.db, batch, request.match_info["action"], body)

    try:
        return _json(await _run(act))
    except ConfigError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    except PipelineError as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from None


def _find(db: Database, batch_id: str) -> Any:
    try:
        return batches.get_batch(db, batch_id)
    except BatchNotFound as exc:
        raise web.HTTPNotFound(text=str(exc)) from None


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        raise web.HTTPBadRequest(text=f"not a whole number: {value!r}") from None


__all__ = ["CSRF_HEADER", "asset", "make_app"]
