"""A small Stripe API on loopback for the real ``stripe`` library, and Stripe's webhooks.

The app talks to it through ``Settings(stripe_api_base=fake.url)``: the official
library sends its form-encoded requests here (no network). It serves what
app/credits/stripe.py calls — create, retrieve and list Checkout Sessions — and
honours the ``Idempotency-Key`` header the way Stripe does: the same key with the
same parameters answers the first response again, the same key with other
parameters is an ``idempotency_error``.

``slow_down()`` makes it a Stripe that takes its time answering (until ``release()``),
and ``arrived`` tells when a request came in.

The test side plays Stripe's part: ``pay()`` completes a session (it gets a
PaymentIntent and a charge), ``tamper()`` makes Stripe disagree with the purchase,
the ``*_event`` builders make event payloads shaped like Stripe's, and ``sign()``
makes the ``Stripe-Signature`` header exactly as Stripe computes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY_PREFIX = "sk_test_"


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding back into objects: ``line_items[0][price_data][unit_amount]=1000``
    becomes ``{"line_items": [{"price_data": {"unit_amount": "1000"}}]}`` (values stay strings)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"^[^\[]+|(?<=\[)[^\]]*(?=\])", key)
        node = root
        for i, part in enumerate(parts):
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node

    return listify(root)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Recorded:
    """One request the fake received, as the stripe library sent it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    params: dict[str, Any]


@dataclass
class _Idempotent:
    fingerprint: str
    status: int
    body: dict


@dataclass
class FakeStripe:
    """Start with ``with FakeStripe() as fake:``; ``fake.url`` is the api base."""

    sessions: dict[str, dict] = field(default_factory=dict)
    charges: dict[str, dict] = field(default_factory=dict)  # by payment intent
    requests: list[Recorded] = field(default_factory=list)
    sessions_created: int = 0  # sessions really made (an idempotent replay makes none)
    drop_next_create_response: bool = False  # make the session, then hang up (a network error)
    busy_for: int = 0  # answer this many more requests with 429 rate_limit_error (not retried by the library)
    answer_after_s: float = 0.0  # a slow Stripe: each answer waits this long, or until release()

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.arrived = threading.Event()  # set by every request received
        self._released = threading.Event()
        self._idempotent: dict[str, _Idempotent] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._serve(self, "GET")

            def do_POST(self) -> None:
                fake._serve(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-stripe", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def slow_down(self, seconds: float) -> None:
        """From now on, answer each request only after ``seconds`` (or at :meth:`release`)."""
        self._released.clear()
        self.arrived.clear()
        self.answer_after_s = seconds

    def release(self) -> None:
        """Answer the requests held by :meth:`slow_down` now, and later ones at once."""
        self._released.set()

    # ---- the API -----------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        query = dict(parse_qsl(split.query))
        recorded = Recorded(
            method=method,
            path=split.path,
            query=query,
            headers={k.lower(): v for k, v in handler.headers.items()},
            params=decode_form(body) if body else {},
        )
        self.arrived.set()
        if self.answer_after_s:
            self._released.wait(self.answer_after_s)
        with self._lock:
            self.requests.append(recorded)
            status, answer, hang_up = self._route(recorded)
        if hang_up:
            handler.close_connection = True
            return  # no response at all: the client sees the connection drop
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.send_header("Request-Id", _id("req"))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(self, req: Recorded) -> tuple[int, dict, bool]:
        auth = req.headers.get("authorization", "")
        if not auth.startswith(f"Bearer {API_KEY_PREFIX}"):
            return 401, _error("invalid_request_error", "Invalid API Key provided."), False
        if self.busy_for > 0:
            self.busy_for -= 1
            return 429, _error("rate_limit_error", "Too many requests hit the API too quickly."), False
        if req.method == "POST" and req.path == "/v1/checkout/sessions":
            return self._create_session(req)
        if req.method == "GET" and req.path == "/v1/checkout/sessions":
            found = [s for s in self.sessions.values() if s["payment_intent"] == req.query.get("payment_intent")]
            if "payment_intent" not in req.query:
                found = list(self.sessions.values())
            listing = {"object": "list", "url": "/v1/checkout/sessions", "has_more": False, "data": found}
            return 200, json.loads(json.dumps(listing)), False
        match = re.fullmatch(r"/v1/checkout/sessions/([^/]+)", req.path)
        if req.method == "GET" and match:
            session = self.sessions.get(match.group(1))
            if session is None:
                message = f"No such checkout.session: '{match.group(1)}'"
                return 404, _error("invalid_request_error", message, code="resource_missing", param="session"), False
            return 200, json.loads(json.dumps(session)), False
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({req.method}: {req.path})."), False

    def _create_session(self, req: Recorded) -> tuple[int, dict, bool]:
        key = req.headers.get("idempotency-key")
        fingerprint = json.dumps(req.params, sort_keys=True)
        if key and key in self._idempotent:
            first = self._idempotent[key]
            if first.fingerprint != fingerprint:
                message = f"Keys for idempotent requests can only be used with the same parameters ({key})."
                return 400, _error("idempotency_error", message), False
            return first.status, first.body, False
        p = req.params
        items = p.get("line_items") or []
        try:
            amount = sum(int(i["price_data"]["unit_amount"]) * int(i.get("quantity", 1)) for i in items)
            currency = items[0]["price_data"]["currency"].lower()
        except (KeyError, IndexError, ValueError, TypeError):
            return 400, _error("invalid_request_error", "line_items need price_data", param="line_items"), False
        session_id = _id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": p.get("mode", "payment"),
            "status": "open",
            "payment_status": "unpaid",
            "amount_subtotal": amount,
            "amount_total": amount,
            "currency": currency,
            "client_reference_id": p.get("client_reference_id"),
            "metadata": p.get("metadata") or {},
            "payment_intent": None,
            "success_url": p.get("success_url"),
            "cancel_url": p.get("cancel_url"),
            "url": f"{self.url}/c/pay/{session_id}",
            "livemode": False,
            "created": int(time.time()),
        }
        self.sessions[session_id] = session
        self.sessions_created += 1
        body = json.loads(json.dumps(session))
        if key:
            self._idempotent[key] = _Idempotent(fingerprint, 200, body)
        if self.drop_next_create_response:
            self.drop_next_create_response = False
            return 200, body, True
        return 200, body, False

    # ---- Stripe's side, for tests -------------------------------------------------------------

    def requests_to(self, method: str, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def session(self, session_id: str) -> dict:
        with self._lock:
            return json.loads(json.dumps(self.sessions[session_id]))

    def pay(self, session_id: str) -> str:
        """The buyer paid: the session completes with a PaymentIntent (and a charge). Returns the intent."""
        with self._lock:
            session = self.sessions[session_id]
            if session["payment_intent"] is None:
                session["payment_intent"] = _id("pi")
                session["status"] = "complete"
                session["payment_status"] = "paid"
                self.charges[session["payment_intent"]] = {
                    "id": _id("ch"),
                    "amount": session["amount_total"],
                    "currency": session["currency"],
                }
            return session["payment_intent"]

    def tamper(self, session_id: str, *, amount_total: int | None = None, currency: str | None = None) -> None:
        """Make Stripe's session disagree with what the app sold."""
        with self._lock:
            session = self.sessions[session_id]
            if amount_total is not None:
                session["amount_total"] = session["amount_subtotal"] = amount_total
            if currency is not None:
                session["currency"] = currency

    # ---- events --------------------------------------------------------------------------------

    @staticmethod
    def event(event_type: str, obj: dict, *, event_id: str | None = None) -> dict:
        return {
            "id": event_id or _id("evt"),
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
            "data": {"object": obj},
        }

    def checkout_completed_event(self, session_id: str) -> dict:
        """``checkout.session.completed`` with the session as Stripe has it now."""
        return self.event("checkout.session.completed", self.session(session_id))

    def charge_refunded_event(
        self, payment_intent: str | None, *, amount: int, amount_refunded: int, currency: str = "usd"
    ) -> dict:
        """``charge.refunded``: ``amount_refunded`` is the charge's running total, as in Stripe."""
        charge = self.charges.get(payment_intent or "", {})
        return self.event(
            "charge.refunded",
            {
                "id": charge.get("id") or _id("ch"),
                "object": "charge",
                "amount": amount,
                "amount_captured": amount,
                "amount_refunded": amount_refunded,
                "currency": currency,
                "paid": True,
                "payment_intent": payment_intent,
                "refunded": amount_refunded >= amount,
                "status": "succeeded",
            },
        )

    def dispute_created_event(
        self, payment_intent: str | None, *, amount: int, dispute_id: str | None = None, currency: str = "usd"
    ) -> dict:
        charge = self.charges.get(payment_intent or "", {})
        return self.event(
            "charge.dispute.created",
            {
                "id": dispute_id or _id("dp"),
                "object": "dispute",
                "amount": amount,
                "charge": charge.get("id") or _id("ch"),
                "currency": currency,
                "payment_intent": payment_intent,
                "reason": "fraudulent",
                "status": "needs_response",
            },
        )

    def unknown_event(self, event_type: str = "customer.subscription.trial_will_end") -> dict:
        return self.event(event_type, {"id": _id("sub"), "object": "subscription", "status": "trialing"})


def _error(kind: str, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return {"error": error}


def payload(event: dict) -> bytes:
    """The body Stripe posts (compact JSON, as its webhooks send)."""
    return json.dumps(event, separators=(",", ":")).encode()


def sign(body: bytes, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    """Headers for a webhook delivery, signed exactly like Stripe: ``t=<ts>,v1=<hex HMAC-SHA256
    of "<ts>.<body>" keyed with the endpoint secret>``."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={mac}", "Content-Type": "application/json; charset=utf-8"}
