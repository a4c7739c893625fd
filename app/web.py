"""What every page and API route shares: templates, the current user, CSRF."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from app.accounts import service as accounts
from app.config import REPO_ROOT, Settings
from app.db import reading
from app.errors import CsrfFailed, NotAuthenticated
from app.security import check_origin
from app.security import is_secure as is_secure  # routes set cookies' Secure flag by it

SESSION_COOKIE = "gouache_session"
CSRF_COOKIE = "gouache_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"

templates = Jinja2Templates(directory=str(REPO_ROOT / "templates"))


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


@dataclass(frozen=True)
class CurrentUser:
    id: int
    email: str
    balance: int
    verified: bool = True  # the email address is confirmed (the banner asks until it is)
    is_admin: bool = False


def optional_user(request: Request) -> CurrentUser | None:
    """The logged-in user, read once per request (a plain ``def``: it queries the database)."""
    if "user" not in request.state._state:
        with reading(get_app_settings(request)) as session:
            user = accounts.user_for_token(session, request.cookies.get(SESSION_COOKIE))
        request.state.user = (
            CurrentUser(user.id, user.email, user.balance, verified=user.verified, is_admin=user.is_admin)
            if user
            else None
        )
    return request.state.user


def forget_user(request: Request) -> None:
    """Drop the user read for this request (its balance just changed): the next
    :func:`optional_user` reads it again."""
    request.state._state.pop("user", None)


def require_user(user: CurrentUser | None = Depends(optional_user)) -> CurrentUser:
    if user is None:
        raise NotAuthenticated()
    return user


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (double-submit cookie), made on first sight."""
    token = getattr(request.state, "csrf_token", None)
    if token is None:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        request.state.csrf_token = token
    return token


async def verify_csrf(request: Request) -> None:
    """Unsafe methods must come from this site (``Origin``/``Referer``, when sent) and
    echo the CSRF cookie in a header (htmx, API) or a form field."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    check_origin(request, get_app_settings(request))
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        field = (await request.form()).get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    if not cookie or not sent or not secrets.compare_digest(str(cookie), str(sent)):
        raise CsrfFailed("The security token of this request is missing or stale. Reload the page and try again.")


def render(request: Request, template: str, status_code: int = 200, **context):
    context.setdefault("user", optional_user(request))
    context.setdefault("settings", get_app_settings(request))
    context["csrf_token"] = csrf_token(request)
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"
