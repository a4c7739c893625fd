"""Running Gouache: the supervisor behind ``gouache dev`` (supervisor.py), the health
checks (health.py) and their routes, ``/healthz`` and ``/readyz`` (routes.py)."""
