"""The admin area (``/admin``: users, jobs and queues, money, the audit log) and ``/metrics``.

Only admins see the admin area. Anyone else, logged in or not, gets the same 404 as for a
page that does not exist: the area's existence is not advertised to people who may not
use it (a 403 would confirm it, and tell an attacker which account to go after).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.admin import metrics, service
from app.config import Settings
from app.db import reading, utcnow
from app.enums import JobStatus
from app.errors import NotFound, UserError
from app.web import CurrentUser, get_app_settings, optional_user, render, verify_csrf

MAX_ID = 2**31 - 1  # an id the database's integer column can hold


def require_admin(user: CurrentUser | None = Depends(optional_user)) -> CurrentUser:
    if user is None or not user.is_admin:
        raise NotFound("Not found.")
    return user


# require_admin first: a visitor's POST gets the 404, not a CSRF error that names the route.
router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin), Depends(verify_csrf)])
metrics_router = APIRouter(tags=["operations"])

UserId = Path(ge=1, le=MAX_ID)
PageNo = Query(1, ge=1, le=service.MAX_PAGE)


def _actor(user: CurrentUser) -> service.Actor:
    return service.Actor(user.email, user.id)


@router.get("")
def admin_home():
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/users")
def users_page(request: Request, q: str = Query("", max_length=320), status: str = "all", page: int = PageNo):
    if status not in service.USER_FILTERS:
        status = "all"
    with reading(get_app_settings(request)) as session:
        found = service.find_users(session, q, status, page)
    return render(request, "admin/users.html", found=found, q=q, status=status, filters=service.USER_FILTERS)


def _user_page(request: Request, settings: Settings, user_id: int, *, status_code: int = 200, **context):
    with reading(settings) as session:
        detail = service.user_detail(session, user_id)
    context.setdefault("error", None)
    context.setdefault("form", {})
    return render(
        request,
        "admin/user.html",
        status_code=status_code,
        detail=detail,
        labels=service.ACTION_LABELS,
        request_id=uuid.uuid4().hex,
        done=request.query_params.get("done"),
        **context,
    )


@router.get("/users/{user_id}")
def user_page(request: Request, user_id: int = UserId):
    return _user_page(request, get_app_settings(request), user_id)


@router.post("/users/{user_id}/suspend")
def suspend(
    request: Request,
    user_id: int = UserId,
    reason: str = Form(""),
    admin: CurrentUser = Depends(require_admin),
):
    settings = get_app_settings(request)
    try:
        cancelled = service.suspend(settings, _actor(admin), user_id, reason)
    except NotFound:
        raise
    except UserError as e:
        return _user_page(request, settings, user_id, status_code=e.status_code, error=e, form={"suspend": reason})
    return RedirectResponse(f"/admin/users/{user_id}?done=suspended&cancelled={cancelled}", status_code=303)


@router.post("/users/{user_id}/unsuspend")
def unsuspend(
    request: Request,
    user_id: int = UserId,
    reason: str = Form(""),
    admin: CurrentUser = Depends(require_admin),
):
    settings = get_app_settings(request)
    try:
        service.unsuspend(settings, _actor(admin), user_id, reason)
    except NotFound:
        raise
    except UserError as e:
        return _user_page(request, settings, user_id, status_code=e.status_code, error=e, form={"unsuspend": reason})
    return RedirectResponse(f"/admin/users/{user_id}?done=unsuspended", status_code=303)


@router.post("/users/{user_id}/grant")
def grant(
    request: Request,
    user_id: int = UserId,
    amount: str = Form(""),
    reason: str = Form(""),
    request_id: str = Form(""),
    admin: CurrentUser = Depends(require_admin),
):
    settings = get_app_settings(request)
    try:
        service.grant(settings, _actor(admin), user_id, service.parse_amount(amount), reason, request_id=request_id)
    except NotFound:
        raise
    except UserError as e:
        form = {"amount": amount, "reason": reason}
        return _user_page(request, settings, user_id, status_code=e.status_code, error=e, form=form)
    return RedirectResponse(f"/admin/users/{user_id}?done=granted", status_code=303)


@router.get("/jobs")
def jobs_page(request: Request, state: str = "", page: int = PageNo):
    if state and state not in JobStatus.__members__.values():
        raise UserError(f"Unknown state {state[:40]!r}; choose one of: {', '.join(JobStatus)}.", field="state")
    settings = get_app_settings(request)
    with reading(settings) as session:
        found = service.jobs_by_state(session, state or None, page)
        counts = service.state_counts(session)
        queues = service.queues(session, settings)
    return render(request, "admin/jobs.html", found=found, counts=counts, queues=queues, state=state, now=utcnow())


@router.get("/money")
def money_page(request: Request, days: int = Query(30, ge=1, le=366)):
    with reading(get_app_settings(request)) as session:
        money = service.money(session, days)
        costs = service.generation_costs(session, days)
    return render(request, "admin/money.html", money=money, costs=costs, days=days)


@router.get("/audit")
def audit_page(request: Request, page: int = PageNo):
    with reading(get_app_settings(request)) as session:
        found = service.audit_log(session, page)
    return render(request, "admin/audit.html", found=found, labels=service.ACTION_LABELS)


@metrics_router.get("/metrics", include_in_schema=False)
def metrics_endpoint(request: Request) -> Response:
    settings = get_app_settings(request)
    refused = metrics.refusal(
        settings, request.headers.get("authorization"), request.client.host if request.client else None
    )
    if refused is not None:
        status, message = refused
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return PlainTextResponse(message, status_code=status, headers=headers)
    return Response(metrics.exposition(settings), media_type=CONTENT_TYPE_LATEST)
