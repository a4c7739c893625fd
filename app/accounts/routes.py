from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Request
from fastapi.responses import RedirectResponse

from app.accounts import service
from app.accounts.models import CHANGE_EMAIL, RESET, VERIFY, User
from app.accounts.throttle import client_address
from app.credits import service as credits
from app.db import reading, transaction
from app.erasure import service as erasure
from app.errors import LinkError, UserError
from app.mail import service as mail
from app.web import SESSION_COOKIE, CurrentUser, get_app_settings, is_secure, render, require_user, verify_csrf

router = APIRouter(dependencies=[Depends(verify_csrf)])


def _logged_in(request: Request, token: str, to: str = "/") -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    _set_session_cookie(request, response, token)
    return response


def _set_session_cookie(request: Request, response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=get_app_settings(request).session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=is_secure(request),
        path="/",
    )


def _logged_out(to: str) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _form_error(request: Request, template: str, error: UserError, email: str, **context):
    """The form again with the error at its own status (422 for a typo, 403 for a suspended
    account, the throttle's 429 or a busy 503 with Retry-After)."""
    status = error.status_code
    response = render(request, template, status_code=status, form={"email": email}, error=error, **context)
    if retry_after := getattr(error, "retry_after", None):
        response.headers["Retry-After"] = str(retry_after)
    return response


# ---- email: links and sending ------------------------------------------------------------


def _public_url(request: Request, path: str) -> str:
    """An absolute link for an email: GOUACHE_BASE_URL, else the address this request came to."""
    base = get_app_settings(request).base_url.rstrip("/") or str(request.base_url).rstrip("/")
    return f"{base}{path}"


def _mail(request: Request, background: BackgroundTasks, to: str, template: str, *, link: str = "", **context) -> None:
    """Send after the response, in the thread pool: a slow or broken mail server delays and
    breaks no page (a failure is logged; the user can ask again)."""
    settings = get_app_settings(request)
    message = mail.compose(settings, to, template, link=link, **context)
    background.add_task(mail.send, settings, message, link=link)


def _send_link(request: Request, background: BackgroundTasks, to: str, template: str, path: str, **context) -> None:
    _mail(request, background, to, template, link=_public_url(request, path), **context)


def _link_error(request: Request, error: LinkError, purpose: str):
    return render(request, "accounts/link_error.html", status_code=error.status_code, error=error, purpose=purpose)


def _link_page(request: Request, token: str, purpose: str, template: str = "accounts/confirm_link.html", **context):
    """The page an emailed link opens (a button or a form, never the action itself: mail
    scanners that open links must not use up a single-use link), or why the link is dead."""
    try:
        with reading(get_app_settings(request)) as session:
            link = service.check_link(session, token, purpose)
    except LinkError as e:
        return _link_error(request, e, purpose)
    return render(request, template, purpose=purpose, email=link.email, **context)


# ---- sign up, confirm the address --------------------------------------------------------


@router.get("/signup")
def signup_page(request: Request):
    return render(request, "accounts/signup.html", form={}, error=None)


@router.post("/signup")
def signup(request: Request, background: BackgroundTasks, email: str = Form(""), password: str = Form("")):
    """A new address gets a confirmation link; an address with an account gets the same
    answer here, and its owner an email saying so (or, unconfirmed, a fresh link)."""
    settings = get_app_settings(request)
    try:
        service.check_password_strength(password, service.normalize_email(email))  # typos don't count
        request.app.state.throttle.take_signup(client_address(request))
        with transaction(settings) as session:
            try:
                user = service.sign_up(session, email, password)
            except service.EmailTaken as taken:
                user = taken.existing
                if user.verified:
                    to = user.email
                    _mail(
                        request,
                        background,
                        to,
                        "signup_taken",
                        link=_public_url(request, "/password/forgot"),
                        login_link=_public_url(request, "/login"),
                    )
                    return RedirectResponse("/signup/sent", status_code=303)
                if not service.may_send_link(session, settings, user.id, VERIFY):
                    return RedirectResponse("/signup/sent", status_code=303)
            to, token = user.email, service.issue_link(session, settings, user, VERIFY)
    except UserError as e:
        return _form_error(request, "accounts/signup.html", e, email)
    _send_link(request, background, to, "verify", f"/email/verify/{token}")
    return RedirectResponse("/signup/sent", status_code=303)


@router.get("/signup/sent")
def signup_sent(request: Request):
    return render(request, "accounts/signup_sent.html")


@router.get("/email/verify/{token}")
def verify_page(request: Request, token: str):
    return _link_page(request, token, VERIFY)


@router.post("/email/verify/{token}")
def verify(request: Request, token: str):
    """Confirm the address: the welcome credits are given (once), and this browser is
    logged in to the account with a fresh session."""
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            user = service.verify_email(session, token)
            credits.grant_signup_credits(session, settings, user.id)
            new_token = service.rotate_session(session, settings, user, request.cookies.get(SESSION_COOKIE))
    except LinkError as e:
        return _link_error(request, e, VERIFY)
    return _logged_in(request, new_token, "/account?welcome=1")


@router.post("/account/verify/resend")
def resend_verification(request: Request, background: BackgroundTasks, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    token = None
    with transaction(settings) as session:
        if not user.verified and service.may_send_link(session, settings, user.id, VERIFY):
            token = service.issue_link(session, settings, session.get_one(User, user.id), VERIFY)
    if token:
        _send_link(request, background, user.email, "verify", f"/email/verify/{token}")
    return RedirectResponse("/account?sent=verify", status_code=303)


# ---- log in and out --------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site, never another site ("//x", "/\\x"
    and "https://x" are other sites to a browser); "" when there is none."""
    target = (target or "").strip()
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return ""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in target):  # a tab or newline browsers drop
        return ""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith(("/login", "/logout")):
        return ""
    return target


@router.get("/login")
def login_page(request: Request, reset: bool = False, everywhere: bool = False, next: str = ""):
    return render(
        request, "accounts/login.html", form={}, error=None, reset=reset, everywhere=everywhere, next=safe_next(next)
    )


@router.post("/login")
def login(request: Request, email: str = Form(""), password: str = Form(""), next: str = Form("")):
    settings = get_app_settings(request)
    try:
        with request.app.state.throttle.login_attempt(email, client_address(request)):
            with transaction(settings) as session:
                user = service.authenticate(session, email, password)
                token = service.rotate_session(session, settings, user, request.cookies.get(SESSION_COOKIE))
    except UserError as e:
        return _form_error(request, "accounts/login.html", e, email, next=safe_next(next))
    return _logged_in(request, token, safe_next(next) or "/")


@router.post("/logout")
def logout(request: Request):
    with transaction(get_app_settings(request)) as session:
        service.end_session(session, request.cookies.get(SESSION_COOKIE))
    return _logged_out("/")


@router.post("/account/logout-everywhere")
def logout_everywhere(request: Request, user: CurrentUser = Depends(require_user)):
    with transaction(get_app_settings(request)) as session:
        service.end_all_sessions(session, user.id)
    return _logged_out("/login?everywhere=1")


# ---- forgot password ---------------------------------------------------------------------


@router.get("/password/forgot")
def forgot_page(request: Request):
    return render(request, "accounts/forgot.html", form={}, error=None, sent=False)


@router.post("/password/forgot")
def forgot(request: Request, background: BackgroundTasks, email: str = Form("")):
    """The same answer whether or not the address has an account; only an owner gets a link."""
    settings = get_app_settings(request)
    try:
        service.normalize_email(email)
    except UserError as e:
        return render(request, "accounts/forgot.html", status_code=422, form={"email": email}, error=e, sent=False)
    token = to = None
    with transaction(settings) as session:
        user = service.user_by_email(session, email)
        if user is not None and service.may_send_link(session, settings, user.id, RESET):
            to, token = user.email, service.issue_link(session, settings, user, RESET)
    if token and to:
        _send_link(request, background, to, "reset", f"/password/reset/{token}")
    return render(request, "accounts/forgot.html", form={"email": email}, error=None, sent=True)


@router.get("/password/reset/{token}")
def reset_page(request: Request, token: str):
    return _link_page(request, token, RESET, "accounts/reset.html", error=None)


@router.post("/password/reset/{token}")
def reset(request: Request, token: str, password: str = Form("")):
    """A new password from the emailed link: every session of the account ends (this
    browser's too); the owner logs in with it."""
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            user = service.reset_password(session, token, password)
            credits.grant_signup_credits(session, settings, user.id)  # the link reached the address
    except LinkError as e:
        return _link_error(request, e, RESET)
    except UserError as e:  # a weak password: the link still works
        with reading(settings) as session:
            email = service.check_link(session, token, RESET).email
        return render(request, "accounts/reset.html", status_code=422, email=email, error=e)
    return _logged_out("/login?reset=1")


# ---- the account page: address, password, sessions ------------------------------------------


def _account(request: Request, status_code: int = 200, **context):
    context.setdefault("error", None)
    context.setdefault("saved", False)
    context.setdefault("notice", None)
    context.setdefault("email_form", {})
    return render(request, "accounts/account.html", status_code=status_code, **context)


@router.get("/account")
def account_page(
    request: Request,
    welcome: bool = False,
    sent: str = "",
    changed: str = "",
    user: CurrentUser = Depends(require_user),
):
    notice = "welcome" if welcome else {"verify": "sent_verify"}.get(sent) or {"email": "email_changed"}.get(changed)
    return _account(request, notice=notice)


@router.post("/account/password")
def change_password(
    request: Request,
    current_password: str = Form(""),
    new_password: str = Form(""),
    user: CurrentUser = Depends(require_user),
):
    """A new password ends every session of the account and gives this browser a new one."""
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            service.change_password(session, user.id, current_password, new_password)
            token = service.start_session(session, settings, session.get_one(User, user.id))
    except UserError as e:
        return _account(request, status_code=422, error=e)
    response = _account(request, saved=True)
    _set_session_cookie(request, response, token)
    return response


@router.post("/account/email")
def change_email_request(
    request: Request,
    background: BackgroundTasks,
    email: str = Form(""),
    password: str = Form(""),
    user: CurrentUser = Depends(require_user),
):
    """The new address gets a link; the account keeps the old one until it is followed."""
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            token = service.request_email_change(session, settings, user.id, password, email)
            new_email = service.normalize_email(email)
    except UserError as e:
        return _account(request, status_code=422, error=e, email_form={"email": email})
    _send_link(request, background, new_email, "change_email", f"/email/change/{token}", old_email=user.email)
    return _account(request, notice="sent_change", new_email=new_email)


@router.get("/email/change/{token}")
def change_email_page(request: Request, token: str):
    return _link_page(request, token, CHANGE_EMAIL)


@router.post("/email/change/{token}")
def change_email(request: Request, background: BackgroundTasks, token: str):
    settings = get_app_settings(request)
    try:
        with transaction(settings) as session:
            user, old_email = service.change_email(session, token)
            credits.grant_signup_credits(session, settings, user.id)  # a confirmed address at last
            new_email = user.email
    except LinkError as e:
        return _link_error(request, e, CHANGE_EMAIL)
    _mail(request, background, old_email, "email_changed", old_email=old_email, new_email=new_email)
    return RedirectResponse("/account?changed=email", status_code=303)


# ---- delete my account -----------------------------------------------------------------------


@router.get("/account/delete")
def delete_page(request: Request, user: CurrentUser = Depends(require_user)):
    return render(request, "accounts/delete.html", error=None)


@router.post("/account/delete")
def delete_account(
    request: Request, background: BackgroundTasks, password: str = Form(""), user: CurrentUser = Depends(require_user)
):
    try:
        email = erasure.delete_account(get_app_settings(request), user.id, password)
    except UserError as e:
        return render(request, "accounts/delete.html", status_code=422, error=e)
    _mail(request, background, email, "account_deleted")
    return _logged_out("/goodbye")


@router.get("/goodbye")
def goodbye(request: Request):
    return render(request, "accounts/goodbye.html")
