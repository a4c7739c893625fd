"""Generation's routes never block the event loop: each is a plain ``def`` (FastAPI runs
it in a thread pool), and a request body is read by an ``async`` dependency instead. The
one ``async`` route is the event stream, which only awaits: each of its reads of the job
runs in the thread pool."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from app.generation import routes

ONLY_AWAITS = {"api_job_events"}


def test_every_generation_route_is_a_plain_def():
    endpoints = [r.endpoint for router in (routes.router, routes.api) for r in router.routes if isinstance(r, APIRoute)]
    coroutines = {e.__name__ for e in endpoints if inspect.iscoroutinefunction(e)}
    assert endpoints and coroutines == ONLY_AWAITS
