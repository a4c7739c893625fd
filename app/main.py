"""create_app(): routers, error handling, CSRF cookie, templates and static files."""

from __future__ import annotations

import re

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import migrate
from app.accounts.routes import router as accounts_router
from app.accounts.throttle import Throttle
from app.admin.metrics import HttpMetrics
from app.admin.routes import metrics_router
from app.admin.routes import router as admin_router
from app.config import REPO_ROOT, Settings, get_settings
from app.credits.routes import api as credits_api
from app.credits.routes import monthly_refill, stripe_router
from app.credits.routes import router as credits_router
from app.errors import NotAuthenticated, UserError
from app.gallery.routes import api as gallery_api
from app.gallery.routes import router as gallery_router
from app.generation.catalog import get_catalog
from app.generation.routes import api as generation_api
from app.generation.routes import router as generation_router
from app.ops.routes import router as ops_router
from app.web import CSRF_COOKIE, csrf_token, is_htmx, is_secure, render


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


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


def create_app(settings: Settings | None = None, *, check_migrations: bool = True) -> FastAPI:
    settings = settings or get_settings()
    get_catalog(settings)  # a broken catalog stops the start, naming the file and the entry
    if check_migrations:
        migrate.check_current(settings)  # refuse to serve an un-migrated database

    app = FastAPI(title="Gouache", version="0.1.0", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.state.throttle = Throttle(settings)  # failed logins, sign-ups, password-hashing turns

    @app.middleware("http")
    async def csrf_cookie_and_headers(request: Request, call_next):
        token = csrf_token(request)
        response = await call_next(request)
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="lax", secure=is_secure(request), path="/")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        response = await _user_error(request, exc)
        if retry_after := getattr(exc, "retry_after", None):  # throttles (429) and a busy server (503)
            response.headers["Retry-After"] = str(retry_after)
        return response

    async def _user_error(request: Request, exc: UserError):
        if _wants_json(request):
            return JSONResponse({"error": exc.message, "field": exc.field}, status_code=exc.status_code)
        if isinstance(exc, NotAuthenticated) and request.method == "GET" and not is_htmx(request):
            return RedirectResponse("/login", status_code=303)
        if is_htmx(request):
            response = await _render(request, "generation/_form_error.html", status_code=exc.status_code, error=exc)
            if isinstance(exc, NotAuthenticated):
                response.headers["HX-Redirect"] = "/login"
            return response
        return await _render(request, "error.html", status_code=exc.status_code, error=exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = f"{where}: {first.get('msg', 'invalid input')}" if where else first.get("msg", "Invalid input.")
        if _wants_json(request):
            return JSONResponse({"error": message, "field": where or None}, status_code=422)
        return await _render(request, "error.html", status_code=422, error=UserError(message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """The API's 404 (no such route) and 405 (wrong method) in its one error shape."""
        if not _wants_json(request):
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
    app.include_router(generation_router, dependencies=refilled, include_in_schema=False)
    app.include_router(gallery_router, dependencies=refilled, include_in_schema=False)
    app.include_router(credits_router, dependencies=refilled, include_in_schema=False)
    app.include_router(generation_api, dependencies=refilled)
    app.include_router(gallery_api, dependencies=refilled)
    app.include_router(credits_api, dependencies=refilled)
    app.include_router(stripe_router)
    app.include_router(admin_router, dependencies=refilled, include_in_schema=False)
    app.include_router(ops_router, include_in_schema=False)  # probes: no user, no refill
    app.include_router(metrics_router, include_in_schema=False)  # Prometheus: a token or loopback, no user
    app.mount("/static", StaticFiles(directory=str(REPO_ROOT / "static")), name="static")
    app.add_middleware(HttpMetrics)  # outermost: times every request, labelled by its route template
    return app
