from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse

from app.accounts import service
from app.credits import service as credits
from app.db import transaction
from app.errors import UserError
from app.web import SESSION_COOKIE, CurrentUser, get_app_settings, is_secure, render, require_user, verify_csrf

router = APIRouter(dependencies=[Depends(verify_csrf)])


def _logged_in(request: Request, token: str, to: str = "/") -> RedirectResponse:
    settings = get_app_settings(request)
    response = RedirectResponse(to, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=is_secure(request),
        path="/",
    )
    return response


@router.get("/signup")
def signup_page(request: Request):
    return render(request, "accounts/signup.html", form={}, error=None)


@router.post("/signup")
def signup(request: Request, email: str = Form(""), password: str = Form("")):
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            user = service.sign_up(session, email, password)
            credits.grant_signup_credits(session, settings, user.id)
            token = service.start_session(session, settings, user)
    except UserError as e:
        return render(request, "accounts/signup.html", status_code=422, form={"email": email}, error=e)
    return _logged_in(request, token)


@router.get("/login")
def login_page(request: Request):
    return render(request, "accounts/login.html", form={}, error=None)


@router.post("/login")
def login(request: Request, email: str = Form(""), password: str = Form("")):
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            user = service.authenticate(session, email, password)
            token = service.start_session(session, settings, user)
    except UserError as e:
        return render(request, "accounts/login.html", status_code=e.status_code, form={"email": email}, error=e)
    return _logged_in(request, token)


@router.post("/logout")
def logout(request: Request):
    with transaction(get_app_settings(request)) as session:
        service.end_session(session, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/account")
def account_page(request: Request, user: CurrentUser = Depends(require_user)):
    return render(request, "accounts/account.html", error=None, saved=False)


@router.post("/account/password")
def change_password(
    request: Request,
    current_password: str = Form(""),
    new_password: str = Form(""),
    user: CurrentUser = Depends(require_user),
):
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            service.change_password(
                session,
                user.id,
                current_password,
                new_password,
                keep_token=request.cookies.get(SESSION_COOKIE),
            )
    except UserError as e:
        return render(request, "accounts/account.html", status_code=422, error=e, saved=False)
    return render(request, "accounts/account.html", error=None, saved=True)
