"""Tell ``gouache dev``'s supervisor that this worker is ready: when Celery's
``worker_ready`` signal fires, write this process's pid to the file named by
``GOUACHE_WORKER_READY_FILE`` (set only by the supervisor; otherwise nothing happens)."""

from __future__ import annotations

import os
from pathlib import Path

from celery.signals import worker_ready

from app.ops.supervisor import READY_FILE_ENV


def _say_ready(**_: object) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    target = Path(path)
    partial = target.with_name(target.name + ".part")
    partial.write_text(str(os.getpid()))
    partial.replace(target)  # the supervisor never sees a half-written file


def connect() -> None:
    worker_ready.connect(_say_ready, weak=False, dispatch_uid="gouache-readiness")
