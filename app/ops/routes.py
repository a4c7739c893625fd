"""``/healthz``: the process is up (for a liveness probe; touches nothing). ``/readyz``:
the database, the broker and object storage answer (for a readiness probe or a load
balancer: 503 naming what fails)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.ops.health import readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    # async on purpose: it does no I/O, so it answers from the event loop even when the
    # thread pool is busy with slow requests; that is what "the process is up" means.
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    checks = readiness(request.app.state.settings)
    failing = [name for name, check in checks.items() if not check.ok]
    body: dict[str, object] = {
        "status": "unavailable" if failing else "ready",
        "checks": {name: check.as_json() for name, check in checks.items()},
    }
    if failing:
        body["failing"] = failing
    return JSONResponse(body, status_code=503 if failing else 200)
