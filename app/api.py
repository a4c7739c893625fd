"""What every route of the JSON API (``/api/v1``) shares: its router, the one error shape
and the error answers each operation documents, the security scheme the schema declares,
and request bodies documented from pydantic models that the domains' own parsers read.

The domains keep their API routes in their ``routes.py`` (an ``api`` router made here);
``app.main`` includes them and keeps the HTML routes out of ``/api/openapi.json``.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Header
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from app.web import verify_csrf

PREFIX = "/api/v1"
T = TypeVar("T")


class ErrorOut(BaseModel):
    """Every API error, whatever its status: what went wrong, and the field it concerns."""

    error: str
    field: str | None = None


_WHY = {
    400: "The request is malformed.",
    401: "Not authenticated: no valid API key or session.",
    402: "Not enough credits.",
    403: "Forbidden: a browser session's request without its CSRF token, or a suspended account.",
    404: "No such thing (or not yours: another user's ids answer the same).",
    409: "A conflict with the current state.",
    422: "Invalid input; `field` names the field.",
    429: "Too many requests or jobs at once; `Retry-After` says when to try again.",
    503: "A service the request needs is unavailable; nothing was charged.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for these error statuses, each answered with :class:`ErrorOut`."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorOut, "description": _WHY[code]}
        if code in (429, 503):
            out[code]["headers"] = {
                "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
            }
    return out


# The security scheme the schema declares: an API key sent as ``Authorization: Bearer
# gch_…``. Only documentation here (auto_error=False: it refuses nothing); the current user
# comes from ``app.web.require_user``. A browser's session cookie works too (with the CSRF
# token in ``X-CSRF-Token`` on unsafe methods).
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key: `Authorization: Bearer gch_…`.",
)


def api_router(**kwargs: Any) -> APIRouter:
    """A router of the JSON API: under ``/api/v1``, CSRF-checked for browser sessions, the
    bearer scheme declared, and the errors every operation may answer documented."""
    return APIRouter(
        prefix=PREFIX,
        dependencies=[Depends(verify_csrf), Depends(bearer)],
        responses=errors(401, 403, 404, 422),
        **kwargs,
    )


def request_body(model: type[BaseModel], *, multipart: type[BaseModel] | None = None) -> dict[str, Any]:
    """``openapi_extra=`` that documents a body read by hand (by an ``async`` dependency, for
    the one parser that checks it) as ``model``: JSON, and form data as ``multipart`` when given."""
    content: dict[str, Any] = {"application/json": {"schema": _optional_fields(model)}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": _optional_fields(multipart)}
    return {"requestBody": {"required": True, "content": content}}


def _optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its optional fields shown as what to send (``T``), not
    ``T | null`` defaulting to null: a client leaves out what it does not set."""
    schema = model.model_json_schema()
    for prop in schema.get("properties", {}).values():
        kinds = prop.get("anyOf", [])
        if prop.get("default", ...) is None and len(kinds) == 2 and {"type": "null"} in kinds:
            prop.pop("anyOf")
            prop.pop("default")
            prop.update(next(kind for kind in kinds if kind != {"type": "null"}))
    return schema


class Page(BaseModel, Generic[T]):
    """One keyset page: the items, and the cursor of the next page (``after=``; null: the last)."""

    items: list[T]
    next_cursor: str | None = None


def idempotency_key(
    idempotency_key: str | None = Header(
        default=None,
        max_length=64,
        description="Repeat a POST with the same key and it takes effect once: the retry gets the first "
        "answer's resource (a job, a collection) instead of a second one.",
    ),
) -> str | None:
    """The request's ``Idempotency-Key`` header (documented on every POST of the API)."""
    return (idempotency_key or "").strip() or None
