"""Who may read the web view and who may act through it.

- A token (generated at start and printed in the URL, as Jupyter does) is required unless the server is
  bound to loopback and started with `--no-token`. It is accepted once as `?token=` (the page is then
  redirected without it and holds a session cookie: HttpOnly, SameSite=Strict), or on every request as
  `Authorization: token T` (or `Bearer T`) for scripts.
- Without a token the Host header must name a loopback address, so a web page elsewhere cannot reach the
  server through a DNS name it points at 127.0.0.1 (DNS rebinding).
- Actions are POST only and off unless `--allow-actions`. A POST carrying the session cookie must also come
  from this origin (`Origin` and `Sec-Fetch-Site`, when the browser sends them) and carry the CSRF token of
  its session (`X-CSRF-Token`, an HMAC of the session id the page reads from `/api/session`). A POST
  authenticated by the `Authorization` header needs neither: a browser never adds that header cross-site.
- Every answer carries a strict Content-Security-Policy (`default-src 'self'`, no inline script).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

COOKIE = "pipeline_ui_session"
CSRF_HEADER = "X-CSRF-Token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) stays on this machine."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    """The server's token (None: none required), and the secret its sessions and CSRF tokens are signed
    with."""

    token: str | None
    allow_actions: bool = False
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def session_of(self, request: web.Request) -> str | None:
        """The request's session id, if its cookie is one this server signed."""
        value = request.cookies.get(COOKIE, "")
        sid, _, signature = value.partition(".")
        if sid and hmac.compare_digest(signature, self._sign("session", sid)):
            return sid
        return None

    def new_cookie(self) -> str:
        sid = secrets.token_urlsafe(18)
        return f"{sid}.{self._sign('session', sid)}"

    def csrf_for(self, sid: str) -> str:
        return self._sign("csrf", sid)

    def header_token_ok(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return (
            self.token is not None
            and scheme.lower() in ("token", "bearer")
            and hmac.compare_digest(value.strip(), self.token)
        )

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()[:32]


def middleware(guard: Guard) -> Any:
    """The aiohttp middleware enforcing `guard` on every request, and the security headers on every answer."""

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await _check(guard, request, handler)
        except web.HTTPException as exc:
            _secure_headers(exc)
            raise
        _secure_headers(response)
        return response

    return guarded


async def _check(guard: Guard, request: web.Request, handler: Handler) -> web.StreamResponse:
    if guard.token is None and not is_loopback(request.host.rsplit(":", 1)[0]):
        raise web.HTTPForbidden(text="this server answers only to a loopback Host name")
    by_header = guard.header_token_ok(request)
    sid = guard.session_of(request)
    given = request.query.get("token")
    if given is not None and guard.token is not None and request.method == "GET":
        if not hmac.compare_digest(given, guard.token):
            raise web.HTTPForbidden(text="wrong token")
        # Once: a session cookie from now on, and the URL without the token (kept out of the history).
        raise _redirect_with_session(guard, request)
    if guard.token is not None and not (by_header or sid):
        raise web.HTTPForbidden(text="a token is required: open the URL `pipeline ui` printed")
    if request.method not in ("GET", "HEAD"):
        _check_action(guard, request, sid, by_header)
    response = await handler(request)
    if sid is None and not by_header:  # no token required: a session for the CSRF token all the same
        response.set_cookie(COOKIE, guard.new_cookie(), httponly=True, samesite="Strict", path="/")
    return response


def _redirect_with_session(guard: Guard, request: web.Request) -> web.HTTPFound:
    query = {k: v for k, v in request.query.items() if k != "token"}
    found = web.HTTPFound(request.rel_url.with_query(query))
    found.set_cookie(COOKIE, guard.new_cookie(), httponly=True, samesite="Strict", path="/")
    return found


def _check_action(guard: Guard, request: web.Request, sid: str | None, by_header: bool) -> None:
    if request.method != "POST":
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    if not guard.allow_actions:
        raise web.HTTPForbidden(text="read-only: start `pipeline ui --allow-actions` to cancel, retry...")
    if by_header:
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="cross-site request refused")
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise web.HTTPForbidden(text="cross-site request refused")
    csrf = request.headers.get(CSRF_HEADER, "")
    if sid is None or not hmac.compare_digest(csrf, guard.csrf_for(sid)):
        raise web.HTTPForbidden(text="missing or wrong CSRF token")


def _secure_headers(response: web.StreamResponse | web.HTTPException) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
