"""The service's front door: one pure-ASGI middleware, :class:`Guard`, in front of every route.

In order, for each HTTP request:

1. **Path bytes**: a percent-encoded path that is not UTF-8 (``/videos/%ff``) or holds a control
   character (``%00``, ``%0A``) is refused with 400 (the server would otherwise decode it to U+FFFD,
   or match no route, and answer a misleading 404).
2. **Host header** (DNS rebinding): only the names of
   :meth:`~retrieval.service.settings.ServeSettings.accepted_hosts` (loopback by default, plus
   ``--allow-host``) are answered; any other ``Host`` gets 400, as Django's ``ALLOWED_HOSTS`` does.
   A web page on another origin that rebinds its DNS name to 127.0.0.1 still sends its own name.
3. **Bearer token** (when one is set): everything but the page itself (``/``, which asks for the
   token) and ``/healthz`` (supervisors) needs ``Authorization: Bearer <token>`` or the
   ``tvr_token`` cookie the page sets (``<img>`` and ``<video>`` cannot send headers); else 401
   with ``WWW-Authenticate: Bearer``. Compared in constant time.
4. **One error shape**: every answer with status >= 400 is ``{"error": "..."}`` JSON, including
   those made below the app's own handlers (Starlette's plain-text 404 for an unknown route, 400
   for a malformed ``Range`` header, 416): a non-JSON error body becomes the message.
"""
from __future__ import annotations

import hmac
import json
import unicodedata
from http import HTTPStatus
from http.cookies import SimpleCookie
from urllib.parse import unquote, unquote_to_bytes

from retrieval.service.settings import ServeSettings

OPEN_PATHS = ("/", "/healthz")     # answered without the token
TOKEN_COOKIE = "tvr_token"


def error_body(status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[dict, dict]:
    """ASGI ``http.response.start`` and ``http.response.body`` messages of a JSON error."""
    body = json.dumps({"error": message}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]}
    return start, {"type": "http.response.body", "body": body}


class Guard:
    """ASGI middleware: path bytes, Host, bearer token, JSON errors (module docstring)."""

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.hosts = settings.accepted_hosts()
        self.token = settings.token.get_secret_value().encode() if settings.token else None
        self.allow_hint = "start the service with --allow-host NAME (or '*')"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self._refusal(scope)
        if refused is not None:
            for message in error_body(*refused):
                await send(message)
            return
        await self.app(scope, receive, _JsonErrors(send))

    def _refusal(self, scope) -> tuple | None:
        """(status, message, extra headers) when the request is refused here, else None."""
        try:
            path = unquote_to_bytes(scope.get("raw_path") or scope["path"].encode()).decode("utf-8")
        except UnicodeDecodeError:
            return 400, "the request path is not valid UTF-8 (percent-encode UTF-8 bytes)", []
        if any(unicodedata.category(ch) == "Cc" for ch in path):
            return 400, "the request path contains a control character (NUL, newline, ...)", []
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.hosts is not None:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                return 400, f"host {host!r} is not accepted by this service; {self.allow_hint}", []
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            return 401, "this service needs its bearer token (Authorization: Bearer ..., or sign in on the page)", \
                [(b"www-authenticate", b'Bearer realm="search"')]
        return None

    def _authorized(self, headers: dict) -> bool:
        given = b""
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        elif b"cookie" in headers:
            cookie = SimpleCookie()
            try:
                cookie.load(headers[b"cookie"].decode("latin-1"))
            except Exception:            # a malformed cookie header is no token
                return False
            if TOKEN_COOKIE in cookie:
                given = unquote(cookie[TOKEN_COOKIE].value).encode("utf-8", "replace")
        return bool(given) and hmac.compare_digest(given, self.token)


def _host_name(header: str) -> str:
    """``Host`` without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _JsonErrors:
    """An ASGI ``send`` that turns a non-JSON error response (status >= 400) into ``{"error": ...}``."""

    def __init__(self, send):
        self.send = send
        self.start = None
        self.chunks: list[bytes] = []

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                self.start = message                 # hold it: the body becomes the message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            status = self.start["status"]
            text = b"".join(self.chunks).decode("utf-8", "replace").strip() or HTTPStatus(status).phrase
            kept = [(k, v) for k, v in self.start.get("headers", [])
                    if k.lower() in (b"retry-after", b"www-authenticate", b"content-range", b"allow")]
            for reshaped in error_body(status, text, kept):
                await self.send(reshaped)
            return
        await self.send(message)
