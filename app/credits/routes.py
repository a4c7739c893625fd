from __future__ import annotations

import logging
from datetime import datetime

import stripe
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel

from app.api import Page, api_router
from app.credits import pricing, service, webhooks
from app.credits import stripe as stripe_glue
from app.db import reading
from app.errors import NotFound, ServiceUnavailable, UserError
from app.generation.catalog import get_catalog
from app.web import CurrentUser, forget_user, get_app_settings, optional_user, render, require_user, verify_csrf

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(verify_csrf)])
stripe_router = APIRouter()  # signed by Stripe, not by a browser: no session, no CSRF

PRICING_SIZES = (256, 512, 768, 1024)
PRICING_STEPS = (10, 20, 30, 50)
MAX_HISTORY_PAGE = 1_000_000  # a page number is an SQL offset: keep it within the database's integers


def monthly_refill(request: Request) -> None:
    """Give a logged-in user this month's free credits before a page or API call shows
    or spends the balance. app.main adds it to the routers of pages and of the API
    (not to the current-user dependency: being logged in does no billing)."""
    settings = get_app_settings(request)
    if not settings.monthly_refill_credits:
        return
    user = optional_user(request)
    # free credits only for a confirmed address (as the welcome credits), or sign-ups would farm them
    if user is not None and user.verified and service.apply_monthly_refill(settings, user.id):
        forget_user(request)  # the page shows the new balance


@router.get("/pricing")
def pricing_page(request: Request, user: CurrentUser | None = Depends(optional_user)):
    settings = get_app_settings(request)
    catalog = get_catalog(settings)
    m = catalog.default.price_multiplier  # the table is for the default model
    table = [
        (
            size,
            [
                pricing.price(settings, width=size, height=size, steps=s, n_images=1, multiplier=m)
                for s in PRICING_STEPS
            ],
        )
        for size in PRICING_SIZES
    ]
    return render(request, "credits/pricing.html", table=table, steps=PRICING_STEPS, catalog=catalog)


@router.get("/billing")
def billing_page(
    request: Request,
    page: int = Query(default=1, le=MAX_HISTORY_PAGE),
    paid: str | None = None,
    canceled: bool = False,
    user: CurrentUser = Depends(require_user),
):
    settings = get_app_settings(request)
    with reading(settings) as session:
        hist = service.history(session, user.id, page)
    just_paid = None
    if paid:
        try:
            just_paid = service.get_purchase(settings, user.id, paid)
        except NotFound:
            just_paid = None
    return render(
        request,
        "credits/billing.html",
        history=hist,
        just_paid=just_paid,
        canceled=canceled,
        checkout=service.checkout_mode(settings),
    )


@router.post("/billing/checkout")
def checkout(request: Request, pack: str = Form(""), user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    base_url = settings.base_url or str(request.base_url)
    _purchase, url = service.start_purchase(settings, user.id, pack, base_url=base_url)
    return RedirectResponse(url, status_code=303)


@router.get("/billing/success")
def checkout_success(request: Request, session_id: str = "", user: CurrentUser = Depends(require_user)):
    """Stripe sends the buyer here; credit at once rather than wait for the webhook."""
    settings = get_app_settings(request)
    if not session_id or not settings.stripe_enabled:
        raise NotFound("No such purchase.")
    try:
        purchase = service.fulfil_checkout_session(settings, session_id)
    except stripe.InvalidRequestError as exc:  # a made-up or foreign session id
        log.warning("success redirect for checkout session %s: %s", session_id, exc)
        raise NotFound("No such purchase.") from None
    except stripe.StripeError as exc:
        log.warning("could not confirm checkout session %s: %s", session_id, exc)
        raise ServiceUnavailable(
            "We could not confirm your payment with Stripe just now. If you paid, your credits "
            "will be added as soon as Stripe confirms it; reload this page to check."
        ) from None
    except service.PaymentMismatch as exc:
        log.error("success redirect for checkout session %s refused: %s", session_id, exc)
        raise UserError(
            "This payment does not match the order, so it has not been credited. Please contact support."
        ) from None
    if purchase is None or purchase.user_id != user.id:
        raise NotFound("No such purchase.")
    return RedirectResponse(f"/billing?paid={purchase.id}", status_code=303)


@router.get("/billing/test-checkout/{purchase_id}")
def test_checkout_page(request: Request, purchase_id: str, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    service.check_test_checkout(settings)
    purchase = service.get_purchase(settings, user.id, purchase_id)
    return render(request, "credits/test_checkout.html", purchase=purchase, pack=settings.pack(purchase.pack_id))


@router.post("/billing/test-checkout/{purchase_id}")
def test_checkout_pay(request: Request, purchase_id: str, user: CurrentUser = Depends(require_user)):
    purchase = service.complete_test_checkout(get_app_settings(request), user.id, purchase_id)
    return RedirectResponse(f"/billing?paid={purchase.id}", status_code=303)


@router.get("/billing/receipts/{purchase_id}")
def receipt(request: Request, purchase_id: str, user: CurrentUser = Depends(require_user)):
    settings = get_app_settings(request)
    purchase = service.get_purchase(settings, user.id, purchase_id)
    if purchase.status != "paid":
        raise NotFound("This purchase has not been paid.")
    return render(request, "credits/receipt.html", purchase=purchase, pack=settings.pack(purchase.pack_id))


async def raw_body(request: Request) -> bytes:
    """The exact bytes Stripe signed (awaited on the event loop; the route then runs in a thread)."""
    return await request.body()


@stripe_router.post("/billing/webhook", include_in_schema=False)
def stripe_webhook(request: Request, body: bytes = Depends(raw_body)):
    """Verify the signature, then hand the event to the handler named after its type.

    A plain ``def``: handling re-reads Stripe and writes the ledger, blocking work that
    FastAPI runs in its thread pool, so other requests go on meanwhile."""
    settings = get_app_settings(request)
    event = stripe_glue.verify(settings, body, request.headers.get("stripe-signature"))
    try:
        outcome = webhooks.handle(settings, event)
    except service.PaymentMismatch as exc:
        log.error("stripe event %s refused: %s", event.id, exc)
        return JSONResponse({"error": "payment does not match the purchase"}, status_code=422)
    except Exception:
        # Stripe retries non-2xx answers with backoff: a transient failure heals itself.
        log.exception("stripe event %s (%s) failed", event.id, event.type)
        return JSONResponse({"error": "could not apply the event; retry later"}, status_code=500)
    log.info("stripe event %s (%s): %s", event.id, event.type, outcome)
    return {"received": True, "outcome": outcome}


# ---- JSON API -----------------------------------------------------------------------------

api = api_router(tags=["credits"])


class BalanceOut(BaseModel):
    balance: int  # credits you can spend now (held credits are already taken off)


class LedgerEntryOut(BaseModel):
    """One movement of your credits: grant, purchase, hold (−, a job's price at submit),
    capture (0: the hold became a charge), release (+, a held price given back), refund,
    chargeback or adjustment."""

    id: int
    kind: str
    amount: int
    memo: str
    job_id: str | None
    created_at: datetime


class LedgerPage(Page[LedgerEntryOut]):
    """A page of your ledger entries, newest first."""


@api.get("/balance")
def api_balance(user: CurrentUser = Depends(require_user)) -> BalanceOut:
    """Your balance in credits (this month's free credits applied first)."""
    return BalanceOut(balance=user.balance)


@api.get("/ledger")
def api_ledger(
    request: Request,
    after: str | None = Query(default=None, description="The previous page's `next_cursor`."),
    limit: int = Query(default=service.LEDGER_PAGE, ge=1, le=200),
    user: CurrentUser = Depends(require_user),
) -> LedgerPage:
    """Your ledger entries, newest first, a keyset page at a time."""
    with reading(get_app_settings(request)) as session:
        entries, next_cursor = service.ledger_page(session, user.id, after, limit)
        items = [
            LedgerEntryOut(id=e.id, kind=e.kind, amount=e.amount, memo=e.memo, job_id=e.job_id, created_at=e.created_at)
            for e in entries
        ]
    return LedgerPage(items=items, next_cursor=next_cursor)
