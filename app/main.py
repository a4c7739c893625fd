"""create_app(): routers, error handling, CSRF cookie, templates and static files."""

from __future__ import annotations

import re
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import migrate
from app.accounts.routes import router as accounts_router
from app.accounts.throttle import Throttle
from app.admin.metrics import HttpMetrics
from app.admin.routes import metrics_router
from app.admin.routes import router as admin_router
from app.apikeys.routes import router as apikeys_router
from app.config import REPO_ROOT, Settings, get_settings
from app.credits.routes import api as credits_api
from app.credits.routes import monthly_refill, stripe_router
from app.credits.routes import router as credits_router
from app.errors import NotAuthenticated, UserError
from app.gallery.routes import api as gallery_api
from app.gallery.routes import router as gallery_router
from app.generation import openai_api
from app.generation.catalog import get_catalog
from app.generation.routes import api as generation_api
from app.generation.routes import router as generation_router
from app.ops.routes import router as ops_router
from app.security import BodyLimit, add_security_headers, csp_nonce
from app.web import CSRF_COOKIE, csrf_token, is_htmx, is_secure, render


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _wants_page(request: Request) -> bool:
    """A browser navigating (it asks for HTML): errors outside the API get a page of ours."""
    return "text/html" in request.headers.get("accept", "")


def _login_url(request: Request) -> str:
    """The login page, coming back here afterwards (the login route checks the path)."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login" if here == "/" else f"/login?{urlencode({'next': here})}"


def _htmx_login_url(request: Request) -> str:
    """For an htmx request the page to come back to is the one it was sent from (htmx names it
    in HX-Current-URL), not the fragment's own address; only its path is kept."""
    page = urlsplit(request.headers.get("HX-Current-URL", ""))
    here = page.path + (f"?{page.query}" if page.query else "")
    return f"/login?{urlencode({'next': here})}" if here.startswith("/") and here != "/" else "/login"


def _allowed_methods(request: Request, fallback: str) -> str:
    """Every method the API takes at this path, from its schema (Starlette's 405 names only
    the first route's)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))  # {job_id} -> one path segment
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return ", ".join(sorted(methods)) or fallback


async def _render(request: Request, template: str, **kw):
    """render() from an async handler: it may read the user from the database, so in a thread."""
    return await run_in_threadpool(render, request, template, **kw)


async def user_error_response(request: Request, exc: UserError):
    """A user's error: JSON under /api/, else a page, or the form's error for htmx; with
    ``Retry-After`` when the error says when to come back (throttles' 429, a busy 503)."""
    response = await _user_error_body(request, exc)
    if retry_after := getattr(exc, "retry_after", None):
        response.headers["Retry-After"] = str(retry_after)
    return response


async def _user_error_body(request: Request, exc: UserError):
    if openai_api.is_openai_path(request.url.path):  # OpenAI's error shape and statuses
        return openai_api.user_error_response(exc)
    if _wants_json(request):
        return JSONResponse({"error": exc.message, "field": exc.field}, status_code=exc.status_code)
    if isinstance(exc, NotAuthenticated) and request.method == "GET" and not is_htmx(request):
        return RedirectResponse(_login_url(request), status_code=303)
    if is_htmx(request):
        response = await _render(request, "generation/_form_error.html", status_code=exc.status_code, error=exc)
        if isinstance(exc, NotAuthenticated):
            response.headers["HX-Redirect"] = _htmx_login_url(request)
        return response
    return await _render(request, "error.html", status_code=exc.status_code, error=exc)


async def _error_page(request: Request, exc: StarletteHTTPException):
    """Our page for a browser's 404 (no such page) or 405 (a form's address opened as a link)."""
    if exc.status_code == 405:
        error = UserError("This address takes a form's answer; it can't be opened as a page.")
    else:
        error = UserError("There is no page at this address. It may have moved, or the link may be mistyped.")
    error.status_code = exc.status_code
    response = await _render(request, "error.html", status_code=exc.status_code, error=error)
    if exc.headers:
        response.headers.update(exc.headers)  # a 405's Allow
    return response


FAVICON = REPO_ROOT / "static" / "favicon.svg"
API_GUIDE = REPO_ROOT / "docs" / "api-guide.md"
SWAGGER_UI = "vendor/swagger-ui"  # from the swagger-ui-dist npm package (scripts/install)


def create_app(settings: Settings | None = None, *, check_migrations: bool = True) -> FastAPI:
    settings = settings or get_settings()
    get_catalog(settings)  # a broken catalog stops the start, naming the file and the entry
    if check_migrations:
        migrate.check_current(settings)  # refuse to serve an un-migrated database

    # The API docs are served from our own route (Swagger UI from static/, not a CDN); no ReDoc.
    app = FastAPI(
        title="Gouache",
        version="0.1.0",
        description=API_GUIDE.read_text(encoding="utf-8"),  # the short guide atop /api/docs
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.settings = settings
    app.state.throttle = Throttle(settings)  # failed logins, sign-ups, password-hashing turns

    # Innermost first: the body limit runs inside the headers, so a 413 gets them too.
    app.add_middleware(BodyLimit, settings=settings, error_response=user_error_response)

    @app.middleware("http")
    async def csrf_cookie_and_headers(request: Request, call_next):
        token = csrf_token(request)
        response = await call_next(request)
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="lax", secure=is_secure(request), path="/")
        add_security_headers(request, response, settings)
        return response

    app.add_exception_handler(UserError, user_error_response)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        if openai_api.is_openai_path(request.url.path):
            return openai_api.validation_error_response(list(exc.errors()))
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = f"{where}: {first.get('msg', 'invalid input')}" if where else first.get("msg", "Invalid input.")
        if _wants_json(request):
            return JSONResponse({"error": message, "field": where or None}, status_code=422)
        return await _render(request, "error.html", status_code=422, error=UserError(message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """The API's 404 (no such route) and 405 (wrong method) in its one error shape
        (OpenAI's under /v1); pages keep FastAPI's."""
        if openai_api.is_openai_path(request.url.path):  # an unknown /v1 path or method
            return openai_api.http_error_response(exc.status_code, str(exc.detail))
        if not _wants_json(request):
            if _wants_page(request) and exc.status_code in (404, 405) and not is_htmx(request):
                return await _error_page(request, exc)
            return await http_exception_handler(request, exc)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request, headers.get("Allow", ""))
            message = f"{request.method} is not allowed here; use {headers['Allow']}."
        elif exc.status_code == 404:
            message = f"No such API endpoint: {request.method} {request.url.path}."
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message, "field": None}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        # (logged and re-raised by Starlette's error middleware after this answer)
        if _wants_json(request):
            return JSONResponse({"error": "Something went wrong on our side.", "field": None}, status_code=500)
        return PlainTextResponse("Internal Server Error", status_code=500)

    # Every page shows the balance in its header and the API spends it: the month's
    # free credits are applied first. Stripe's webhook is not a user's request.
    # /api/openapi.json documents the JSON API only: the pages are left out of it.
    refilled = [Depends(monthly_refill)]
    app.include_router(accounts_router, dependencies=refilled, include_in_schema=False)
    app.include_router(apikeys_router, dependencies=refilled, include_in_schema=False)
    app.include_router(generation_router, dependencies=refilled, include_in_schema=False)
    app.include_router(gallery_router, dependencies=refilled, include_in_schema=False)
    app.include_router(credits_router, dependencies=refilled, include_in_schema=False)
    app.include_router(generation_api, dependencies=refilled)
    app.include_router(gallery_api, dependencies=refilled)
    app.include_router(credits_api, dependencies=refilled)
    # /v1: OpenAI's Images API, API keys only; its reference is OpenAI's own (docs/ and README)
    app.include_router(openai_api.router, dependencies=refilled, include_in_schema=False)
    app.include_router(stripe_router)
    app.include_router(admin_router, dependencies=refilled, include_in_schema=False)
    app.include_router(ops_router, include_in_schema=False)  # probes: no user, no refill
    app.include_router(metrics_router, include_in_schema=False)  # Prometheus: a token or loopback, no user

    @app.get("/api/docs", include_in_schema=False)
    async def api_docs(request: Request) -> HTMLResponse:
        """Swagger UI, offline: its files from static/, its inline start-up script
        allowed by this response's CSP nonce."""
        static = f"/static/{SWAGGER_UI}"
        page = get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="Gouache API",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
        nonce = csp_nonce(request)
        html = bytes(page.body).decode().replace("<script>", f'<script nonce="{nonce}">')
        return HTMLResponse(html)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        """Browsers ask for /favicon.ico on their own: the same SVG that pages link to."""
        return FileResponse(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=str(REPO_ROOT / "static")), name="static")
    app.add_middleware(HttpMetrics)  # outermost: times every request, labelled by its route template
    return app
