"""Stripe's events, each applied by the function named after its type.

The endpoint only verifies the signature (stripe.verify) and calls :func:`handle`.
Every effect goes through the service's idempotent fulfilment and claw-backs, so a
duplicate or out-of-order delivery changes nothing. A type with no handler answers
200 ("ignored") so Stripe does not keep retrying it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import stripe

from app.config import Settings
from app.credits import service

Handler = Callable[[Settings, dict[str, Any]], str]


def checkout_session_completed(settings: Settings, checkout: dict[str, Any]) -> str:
    """Also ``checkout.session.async_payment_succeeded``: Stripe is re-read, not trusted from the event."""
    purchase = service.fulfil_checkout_session(settings, checkout["id"])
    return f"purchase {purchase.status}" if purchase else "not ours"


def charge_refunded(settings: Settings, charge: dict[str, Any]) -> str:
    taken = service.apply_refund(settings, charge["payment_intent"], amount_refunded=charge["amount_refunded"])
    return "not ours" if taken is None else f"took back {taken}"


def charge_dispute_created(settings: Settings, dispute: dict[str, Any]) -> str:
    taken = service.apply_dispute(
        settings, dispute["payment_intent"], dispute_id=dispute["id"], amount=dispute["amount"]
    )
    return "not ours" if taken is None else f"took back {taken}"


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": checkout_session_completed,
    "checkout.session.async_payment_succeeded": checkout_session_completed,
    "charge.refunded": charge_refunded,
    "charge.dispute.created": charge_dispute_created,
}


def handle(settings: Settings, event: stripe.Event) -> str:
    """Apply one verified event; returns what happened (for the log and the reply)."""
    handler = HANDLERS.get(event.type)
    if handler is None:
        return "ignored"
    return handler(settings, event.data.object.to_dict())
