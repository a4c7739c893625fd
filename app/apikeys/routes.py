"""The API keys page (``/account/api-keys``): make a key (shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse

from app.apikeys import service
from app.db import reading, transaction
from app.errors import UserError
from app.web import CurrentUser, get_app_settings, render, require_user, verify_csrf

router = APIRouter(dependencies=[Depends(verify_csrf)])
PAGE = "/account/api-keys"


def _page(request: Request, user: CurrentUser, status_code: int = 200, **context):
    settings = get_app_settings(request)
    with reading(settings) as session:
        keys = service.list_keys(session, user.id)
    context["api_base"] = (settings.base_url.rstrip("/") or str(request.base_url).rstrip("/")) + "/v1"
    context.setdefault("error", None)
    context.setdefault("new_key", None)
    context.setdefault("revoked", None)
    context.setdefault("name", "")
    response = render(request, "apikeys/keys.html", status_code=status_code, keys=keys, **context)
    response.headers["Cache-Control"] = "no-store"  # it may hold a key, shown this once
    return response


@router.get(PAGE)
def keys_page(request: Request, revoked: str = "", user: CurrentUser = Depends(require_user)):
    return _page(request, user, revoked=revoked[:12] or None)


@router.post(PAGE)
def create_key(request: Request, name: str = Form(""), user: CurrentUser = Depends(require_user)):
    """Make a key and show it on this answer only (no redirect: the key must not sit in a
    URL or the history); only its hash is kept."""
    try:
        with transaction(get_app_settings(request)) as session:
            row, key = service.create(session, user.id, name)
            made = (row.prefix, row.name)
    except UserError as error:
        return _page(request, user, status_code=error.status_code, error=error, name=name)
    return _page(request, user, new_key=key, new_name=made[1])


@router.post(PAGE + "/{key_id}/revoke")
def revoke_key(request: Request, key_id: int, user: CurrentUser = Depends(require_user)):
    with transaction(get_app_settings(request)) as session:
        prefix = service.revoke(session, user.id, key_id).prefix
    return RedirectResponse(f"{PAGE}?revoked={prefix}", status_code=303)
