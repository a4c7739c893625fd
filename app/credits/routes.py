from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import stripe
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel

from app.api import Page, api_router
from app.config import Settings
from app.credits import ledger, pricing, service, webhooks
from app.credits import stripe as stripe_glue
from app.db import reading
from app.enums import MODES, JobStatus, Mode
from app.errors import NotFound, ServiceUnavailable, UserError
from app.generation import quote
from app.generation import service as generation
from app.generation.catalog import ModelSpec, get_catalog
from app.generation.models import Job
from app.generation.schemas import parse_quote
from app.web import CurrentUser, forget_user, get_app_settings, optional_user, render, require_user, verify_csrf

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(verify_csrf)])
stripe_router = APIRouter()  # signed by Stripe, not by a browser: no session, no CSRF

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


@dataclass(frozen=True)
class SizePrices:
    """One row of a model's size table: a size the model's form offers, and the credits of one
    image of it at each of the table's step counts."""

    label: str
    width: int
    height: int
    credits: list[int]


@dataclass(frozen=True)
class ModelPrices:
    model: ModelSpec
    steps: list[int]
    sizes: list[SizePrices]


def _model_prices(settings: Settings, model: ModelSpec) -> ModelPrices:
    """The sizes the model's form offers, priced at half, the default and double its steps."""
    d = model.default_steps
    steps = sorted({max(1, d // 2), d, min(model.max_steps, d * 2)})
    sizes = [
        SizePrices(
            preset.label.partition(" — ")[0],
            preset.width,
            preset.height,
            [
                pricing.price(
                    settings,
                    width=preset.width,
                    height=preset.height,
                    steps=s,
                    n_images=1,
                    multiplier=model.price_multiplier,
                )
                for s in steps
            ],
        )
        for preset in quote.size_presets(model)
    ]
    return ModelPrices(model, steps, sizes)


@dataclass(frozen=True)
class Example:
    """A worked example for the pricing page: a request of one mode and what it costs."""

    mode: str
    n_images: int
    source: tuple[int, int] | None  # the image it starts from (image modes)
    width: int  # what it makes
    height: int
    steps: int  # the steps asked for
    denoising_steps: int  # the steps the model really runs (image modes: steps × strength)
    strength: float | None
    tiles: list[tuple[int, int]]  # the sizes of the pieces it is painted in
    credits: int
    factor: int | None = None  # an upscale's
    source_credits: int | None = None  # what making the source image cost (an upscale's, for comparison)

    @property
    def per_piece(self) -> int:
        return self.credits // (len(self.tiles) * self.n_images)

    @property
    def pixel_ratio(self) -> float:
        """How many times the source's pixels the output has."""
        if not self.source:
            return 1.0
        return (self.width * self.height) / (self.source[0] * self.source[1])


def _example(settings: Settings, model: ModelSpec, data: dict[str, Any], source: tuple[int, int] | None) -> Example:
    """Price ``data`` (form fields) exactly as the form's quote does."""
    req = parse_quote({"model": model.id, "steps": model.default_steps, **data}, settings)
    if source is not None:
        width, height = quote.output_size(settings, req, source)
        req = replace(req, width=width, height=height)
    boxes = quote.tiles(model, req.mode, req.width, req.height)
    return Example(
        mode=req.mode,
        n_images=req.n_images,
        source=source,
        width=req.width,
        height=req.height,
        steps=req.steps,
        denoising_steps=req.denoising_steps,
        strength=req.strength,
        tiles=[(right - left, bottom - top) for left, top, right, bottom in boxes],
        credits=quote.quote(settings, req),
        factor=req.upscale,
    )


def pricing_examples(settings: Settings, model: ModelSpec) -> dict[str, Example]:
    """One worked example per mode for ``model`` (and the largest upscale it can make),
    each priced by the same code as the form's quote."""
    d = model.default_size
    square = (d, d)
    examples: dict[str, Example] = {
        Mode.TXT2IMG: _example(settings, model, {"mode": Mode.TXT2IMG, "n": 4, "size": f"{d}x{d}"}, None),
        Mode.IMG2IMG: _example(settings, model, {"mode": Mode.IMG2IMG}, square),
        Mode.INPAINT: _example(settings, model, {"mode": Mode.INPAINT}, square),
        Mode.OUTPAINT: _example(settings, model, {"mode": Mode.OUTPAINT, "extend_right": d // 2}, square),
        Mode.VARIATION: _example(settings, model, {"mode": Mode.VARIATION, "variation": "subtle", "n": 4}, square),
    }
    # An upscale of an image of the default size, and of the largest the model makes: 4× where
    # the result fits the upscale limit, else 2×.
    for name, side in ((Mode.UPSCALE.value, d), ("upscale_large", model.max_size)):
        upscaled = _upscale_example(settings, model, side)
        if upscaled is not None and (name == Mode.UPSCALE or side != d):
            examples[name] = upscaled
    return examples


def _upscale_example(settings: Settings, model: ModelSpec, side: int) -> Example | None:
    for factor in (4, 2):
        if side * factor <= settings.max_upscale_side:
            made = pricing.price(
                settings,
                width=side,
                height=side,
                steps=model.default_steps,
                n_images=1,
                multiplier=model.price_multiplier,
            )
            example = _example(settings, model, {"mode": Mode.UPSCALE, "upscale": factor}, (side, side))
            return replace(example, source_credits=made)
    return None


@router.get("/pricing")
def pricing_page(request: Request, user: CurrentUser | None = Depends(optional_user)):
    settings = get_app_settings(request)
    catalog = get_catalog(settings)
    return render(
        request,
        "credits/pricing.html",
        models=[_model_prices(settings, m) for m in catalog],
        examples=pricing_examples(settings, catalog.default),
        catalog=catalog,
        modes=MODES,
    )


def job_state(row: service.HistoryRow, job: Job | None) -> str:
    """What the billing history says of a job: succeeded (charged), failed or cancelled (its
    hold given back), queued or running (held). The ledger decides whether it was charged;
    the job row, how it ended."""
    if row.settled == ledger.CAPTURE:
        return JobStatus.SUCCEEDED
    if row.settled == ledger.RELEASE:
        return JobStatus.CANCELLED if job is not None and job.status == JobStatus.CANCELLED else JobStatus.FAILED
    return JobStatus.QUEUED if job is not None and job.status == JobStatus.QUEUED else JobStatus.RUNNING


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
        job_ids = [row.entry.job_id for row in hist.rows if row.entry.job_id]
        jobs = generation.jobs_with_first_image(session, user.id, job_ids)
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
        jobs=jobs,
        job_state=job_state,
        modes=MODES,
        money=service.money,
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
