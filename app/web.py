"""What every page and API route shares: templates, the current user, CSRF."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from app.accounts import service as accounts
from app.apikeys import service as apikeys
from app.config import REPO_ROOT, Settings
from app.db import reading
from app.errors import CsrfFailed, NotAuthenticated
from app.security import check_origin
from app.security import is_secure as is_secure  # routes set cookies' Secure flag by it

SESSION_COOKIE = "gouache_session"
CSRF_COOKIE = "gouache_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
# Paths a script calls: an API key (``Authorization: Bearer gch_…``) authenticates them, and
# an error is JSON, never a redirect. /v1/ is the OpenAI-compatible API: keys only, no cookies.
API_PREFIXES = ("/api/", "/v1/")
KEY_ONLY_PREFIX = "/v1/"

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
    api_key_id: int | None = None  # the API key that authenticated this request (None: a browser session)


def is_api_path(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIXES)


def bearer_token(request: Request) -> str | None:
    """The ``Authorization: Bearer`` token of an API request ("" when the header names the
    scheme but no token); None for other paths, or when there is no such header."""
    if not is_api_path(request):
        return None
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def optional_user(request: Request) -> CurrentUser | None:
    """The user of this request, read once per request (a plain ``def``: it queries the
    database): on an API path with a bearer token, the key's owner (a bad or revoked key is
    :class:`~app.apikeys.service.InvalidApiKey`, 401; a suspended owner, 403; each key's
    requests are rate limited); otherwise the browser session's user (none on /v1/)."""
    if "user" not in request.state._state:
        token = bearer_token(request)
        if token is not None:
            request.state.user = _key_user(request, token)
        elif request.url.path.startswith(KEY_ONLY_PREFIX):
            request.state.user = None
        else:
            with reading(get_app_settings(request)) as session:
                user = accounts.user_for_token(session, request.cookies.get(SESSION_COOKIE))
            request.state.user = (
                CurrentUser(user.id, user.email, user.balance, verified=user.verified, is_admin=user.is_admin)
                if user
                else None
            )
    return request.state.user


def _key_user(request: Request, token: str) -> CurrentUser:
    who = apikeys.authenticate(get_app_settings(request), token)
    if getattr(request.state, "api_key_counted", None) != who.key_id:  # once per request, re-reads included
        request.state.api_key_counted = who.key_id
        request.app.state.throttle.take_api_request(who.key_id)
    return CurrentUser(
        who.user_id, who.email, who.balance, verified=who.verified, is_admin=who.is_admin, api_key_id=who.key_id
    )


def forget_user(request: Request) -> None:
    """Drop the user read for this request (its balance just changed): the next
    :func:`optional_user` reads it again."""
    request.state._state.pop("user", None)


def require_user(request: Request, user: CurrentUser | None = Depends(optional_user)) -> CurrentUser:
    if user is None:
        if is_api_path(request):
            raise NotAuthenticated("Send an API key as 'Authorization: Bearer gch_…' (make one on the API keys page).")
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
    echo the CSRF cookie in a header (htmx, API) or a form field.

    Neither is needed where no cookie session can be involved: a request an API key
    authenticates (a browser never sends one cross-site: the header needs a CORS preflight
    this app never allows), and an API request with no session cookie (the route answers
    401 itself)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if bearer_token(request) is not None or (is_api_path(request) and SESSION_COOKIE not in request.cookies):
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
