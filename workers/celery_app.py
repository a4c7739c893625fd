"""The workers' Celery application, configured from the same Settings as the web
process (``app/queue.py`` holds the shared configuration and sends tasks by name).

Workers start it with ``gouache worker`` (``celery -A workers.celery_app worker``).
"""

from __future__ import annotations

from celery import Celery

from app.config import get_settings
from app.queue import configure
from workers import readiness

app = configure(Celery("gouache", include=["workers.tasks"]), get_settings())  # importing creates no folders
readiness.connect()  # under `gouache dev`, the worker tells the supervisor when it is ready
