"""What every response and every request gets before a route sees it: a limit on the
request body, the security headers (Content-Security-Policy, HSTS, Permissions-Policy)
and the check that a state-changing request comes from this site's own pages."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import Request
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.errors import CsrfFailed, UserError

# ---- the request body limit --------------------------------------------------------

# Forms that may carry an image and a mask (max_upload_bytes each) besides their fields.
UPLOAD_PATHS = frozenset({"/generate", "/api/v1/generations"})


class PayloadTooLarge(UserError):
    status_code = 413


class _TooLarge(Exception):
    """Raised into the app from ``receive`` once the body passed the limit."""


def body_limit(settings: Settings, scope: Scope) -> int:
    """The most bytes this request's body may have."""
    content_type = Headers(scope=scope).get("content-type", "")
    if scope["path"] in UPLOAD_PATHS and content_type.startswith("multipart/form-data"):
        return settings.max_body_bytes + 2 * settings.max_upload_bytes
    return settings.max_body_bytes


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{n // 1024} KB"


ErrorResponder = Callable[[Request, UserError], Awaitable[Response]]


class BodyLimit:
    """Refuse request bodies over :func:`body_limit` with 413, in the app's own error
    format (JSON under ``/api/``, a page or an htmx form error otherwise).

    A pure ASGI middleware, so nothing is buffered: a declared Content-Length over the
    limit is refused before the app runs, and a body without one (chunked) is counted
    as it streams in and cut off at the limit."""

    def __init__(self, app: ASGIApp, settings: Settings, error_response: ErrorResponder) -> None:
        self.app = app
        self.settings = settings
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(scope, receive, send, limit)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the app made of the cut-off body (a 400 from a form parser): ours instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        scope.setdefault("router", scope["app"].router)  # url_for in the error page, before routing
        request = Request(scope, receive)
        error = PayloadTooLarge(f"The request is too large: the limit is {_megabytes(limit)}.")
        response = await self.error_response(request, error)
        response.headers["Connection"] = "close"  # the rest of the body is never read
        if request.headers.get("hx-request") == "true":
            response.headers["HX-Retarget"] = "#form-error"
            response.headers["HX-Reswap"] = "outerHTML"
        await response(scope, receive, send)


# ---- security headers --------------------------------------------------------------

STRIPE_CHECKOUT = "https://checkout.stripe.com"

PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer", "autoplay", "camera", "display-capture", "encrypted-media", "fullscreen",
        "geolocation", "gyroscope", "magnetometer", "microphone", "midi", "payment", "usb",
        "xr-spatial-tracking", "browsing-topics",
    )
)  # fmt: skip


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def content_security_policy(settings: Settings, nonce: str | None = None) -> str:
    """The policy of every page: scripts and styles only from our own static files (a
    page that must run an inline script, the API docs, gets a per-response nonce)."""
    script = "'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    # A purchase's form is answered by a redirect to Stripe's checkout, which browsers
    # check against form-action too.
    form_action = ["'self'"]
    if settings.stripe_enabled:
        form_action.append(STRIPE_CHECKOUT)
        if settings.stripe_api_base and (api_origin := _origin(settings.stripe_api_base)):
            form_action.append(api_origin)  # a local Stripe stand-in hands out its own checkout URLs
    directives = {
        "default-src": "'self'",
        "script-src": script,
        "style-src": "'self'",
        "img-src": "'self' data: blob:",  # data: Swagger UI's icons; blob: an upload's preview
        "font-src": "'self'",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": " ".join(form_action),
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def csp_nonce(request: Request) -> str:
    """A nonce for this response's inline script (the security headers then allow it)."""
    nonce = getattr(request.state, "csp_nonce", None)
    if nonce is None:
        nonce = request.state.csp_nonce = secrets.token_urlsafe(16)
    return nonce


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def add_security_headers(request: Request, response: Response, settings: Settings) -> None:
    headers = response.headers
    nonce = request.state._state.get("csp_nonce")
    headers.setdefault("Content-Security-Policy", content_security_policy(settings, nonce))
    headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if settings.hsts_max_age_s and is_secure(request):
        # Only over https: a browser ignores it over http, and a site still on http
        # must not be told to refuse http.
        headers.setdefault("Strict-Transport-Security", f"max-age={settings.hsts_max_age_s}")


# ---- where a state-changing request comes from -------------------------------------------


def _normalized(origin: str) -> tuple[str, str, int | None] | None:
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower(), port


def check_origin(request: Request, settings: Settings) -> None:
    """A state-changing request that says where it comes from (``Origin``, else
    ``Referer``) must come from this site: the request's own origin or ``base_url``.
    Saying nothing is allowed (older clients); the CSRF token is still checked."""
    claimed = request.headers.get("origin")
    if claimed is None:
        referer = request.headers.get("referer")
        if not referer:
            return
        claimed = _origin(referer) or referer
    own = {_normalized(f"{request.url.scheme}://{request.url.netloc}")}
    if settings.base_url:
        own.add(_normalized(settings.base_url))
    source = _normalized(claimed)
    if source is None or source not in own:
        raise CsrfFailed(
            "This request came from another site, so it was refused. "
            "If you meant to do this, do it from this site's own page."
        )
