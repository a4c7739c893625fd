"""Generation's routes never block the event loop: each is a plain ``def`` (FastAPI runs
it in a thread pool), and a request body is read by an ``async`` dependency instead."""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from app.generation import routes


def test_every_generation_route_is_a_plain_def():
    endpoints = [r.endpoint for router in (routes.router, routes.api) for r in router.routes if isinstance(r, APIRoute)]
    assert endpoints and not [e.__name__ for e in endpoints if inspect.iscoroutinefunction(e)]
