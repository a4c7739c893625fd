"""Stripe, through the official library: Checkout Sessions and webhook signatures.

Only this module talks to Stripe. It knows nothing of purchases' fate: the
service calls it, and webhooks.py handles the events :func:`verify` lets in.
"""

from __future__ import annotations

import logging
from typing import Any

import stripe

from app.config import Settings
from app.credits.models import Purchase
from app.errors import UserError

log = logging.getLogger(__name__)


def client(settings: Settings) -> stripe.StripeClient:
    kwargs: dict[str, Any] = {"max_network_retries": 2}
    if settings.stripe_api_base:
        kwargs["base_addresses"] = {"api": settings.stripe_api_base}
    return stripe.StripeClient(settings.stripe_secret_key, **kwargs)


# The service gets plain dicts: in current stripe-python (16 here) a StripeObject is not a
# dict (no .get()), and the service must not depend on the library's object model.


def create_checkout_session(settings: Settings, purchase: Purchase, pack_name: str, *, base_url: str) -> dict:
    checkout = client(settings).v1.checkout.sessions.create(
        {
            "mode": "payment",
            "client_reference_id": purchase.id,
            "metadata": {"purchase_id": purchase.id, "user_id": str(purchase.user_id)},
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": purchase.currency,
                        "unit_amount": purchase.amount,
                        "product_data": {"name": f"Gouache credits — {pack_name} ({purchase.credits} credits)"},
                    },
                }
            ],
            "success_url": f"{base_url}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
            "cancel_url": f"{base_url}/billing?canceled=1",
        },
        # A retried create (a network error, a double click on the same purchase)
        # returns the same session instead of making a second one.
        {"idempotency_key": f"gouache-purchase-{purchase.id}"},
    )
    return checkout.to_dict()


def retrieve_checkout_session(settings: Settings, session_id: str) -> dict:
    return client(settings).v1.checkout.sessions.retrieve(session_id).to_dict()


def checkout_sessions_for_payment(settings: Settings, payment_intent_id: str) -> list[dict]:
    found = client(settings).v1.checkout.sessions.list({"payment_intent": payment_intent_id})
    return [checkout.to_dict() for checkout in found.data]


class BadWebhook(UserError):
    status_code = 400


def verify(settings: Settings, payload: bytes, signature: str | None) -> stripe.Event:
    if not settings.stripe_webhook_secret:
        raise BadWebhook("Stripe webhooks are not configured on this server.")
    try:
        return stripe.Webhook.construct_event(
            payload, signature, settings.stripe_webhook_secret, tolerance=settings.stripe_webhook_tolerance_s
        )
    except stripe.SignatureVerificationError:
        raise BadWebhook("Bad or stale Stripe signature.") from None
    except ValueError:
        raise BadWebhook("The payload is not a Stripe event.") from None
