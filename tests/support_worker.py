"""``python -m tests.support_worker worker ...``: the real `gouache worker` command that also
tells the test which started it when Celery sends ``worker_ready``, by writing a line to
the pipe whose file descriptor is in ``TEST_WORKER_READY_FD`` (see ``tests.support.Worker``)."""

from __future__ import annotations

import os

from celery.signals import worker_ready

READY_FD_ENV = "TEST_WORKER_READY_FD"


@worker_ready.connect
def _tell_the_test(**_kwargs) -> None:
    fd = os.environ.get(READY_FD_ENV)
    if fd:
        os.write(int(fd), b"ready\n")  # left open: its end-of-file tells the test the worker exited


if __name__ == "__main__":
    from workers.cli import main

    main()
