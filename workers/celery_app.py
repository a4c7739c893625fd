"""The workers' Celery application, configured from the same Settings as the web
process (``app/queue.py`` holds the shared configuration and sends tasks by name).

Workers start it with ``gouache worker`` (``celery -A workers.celery_app worker``).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init

from app.config import get_settings
from app.queue import configure
from workers import logs, readiness

app = configure(Celery("gouache", include=["workers.tasks"]), get_settings())  # importing creates no folders
readiness.connect()  # under `gouache dev`, the worker tells the supervisor when it is ready

# The console says what the worker does, not what its libraries mutter (workers/logs.py):
# set here, before the worker starts and checks who it runs as.
logs.drop_library_notices()
logs.allow_root_without_pickle(app.conf.accept_content)


@worker_init.connect(weak=False, dispatch_uid="gouache-quiet-loading")
def _quiet_loading(**_: object) -> None:
    logs.no_loading_progress_bars()
