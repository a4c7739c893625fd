"""Where a worker's time goes beyond the pipeline: the worker's task code run in this
process (claim, pipeline, PNG with metadata, thumbnail, storage, the settling transaction,
the progress writer thread), alternating with the same pipeline called directly.

``bench/serving.py`` measures the same ratio through real processes; on a few CPU cores
its figure also holds what the other processes burn meanwhile (the web answering the
client's polls, the broker's polling), which slows a CPU pipeline but not a GPU one. This
one holds only the worker's own work, and prints each part's median:

    .venv/bin/python bench/worker_parts.py            # demo model, 8 jobs, ~1 minute on 2 cores
    .venv/bin/python bench/worker_parts.py --runs 20
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.accounts import service as accounts  # noqa: E402
from app.config import Settings  # noqa: E402
from app.credits import ledger  # noqa: E402
from app.db import transaction  # noqa: E402
from app.gallery import thumbnails  # noqa: E402
from app.generation import metadata, schemas, service  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from bench.serving import direct  # noqa: E402  (the same direct call serving.py times)

PARTS: dict[str, list[float]] = {}
RECORDING = [False]  # only the worker's calls count as its parts, not the direct calls


def timed(module: Any, name: str, label: str) -> None:
    """Wrap ``module.name`` so each call's duration (while recording) is kept under ``label``."""
    inner: Callable[..., Any] = getattr(module, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if RECORDING[0]:
                PARTS.setdefault(label, []).append(time.perf_counter() - started)

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--model", default="builtin:demo")
    parser.add_argument("--preview-every", type=int, default=None, help="override GOUACHE_PREVIEW_EVERY")
    parser.add_argument(
        "--batch-window-ms", type=int, default=None, help="override GOUACHE_BATCH_WINDOW_MS (a lone job waits it)"
    )
    args = parser.parse_args()

    extra: dict[str, Any] = {} if args.preview_every is None else {"preview_every": args.preview_every}
    if args.batch_window_ms is not None:
        extra["batch_window_ms"] = args.batch_window_ms
    settings = Settings(
        _env_file=None, data_dir=Path(tempfile.mkdtemp(prefix="gouache-bench-")), model=args.model, **extra
    )
    upgrade(settings)
    from workers import pipelines, tasks  # torch: after the settings

    tasks.get_settings = lambda: settings  # type: ignore[assignment]
    with transaction(settings) as session:
        user_id = accounts.sign_up(session, "bench@example.com", "a long enough passphrase").id
        ledger.grant(session, user_id, 10**9, memo="bench", key="bench")

    for module, name, label in (
        (service, "claim", "claim (a write transaction)"),
        (pipelines, "sample", "pipeline"),
        (metadata, "png_bytes", "PNG with parameters"),
        (thumbnails, "webp", "thumbnail (WebP)"),
        (service, "succeed", "images + capture (a write transaction)"),
    ):
        timed(module, name, label)

    def submit() -> Any:
        req = schemas.parse_request({"prompt": "a red circle on a blue background", "seed": 7}, settings)
        return service.submit(settings, user_id, req, uuid.uuid4().hex)

    def direct_call(job: Any) -> float:
        return direct(pipelines.load(settings, tasks.model_of(settings, job).source), job)

    warm = submit()
    tasks.generate(warm.id)  # loads the model; not counted
    direct_call(warm)
    worker_s, direct_s = [], []
    for _ in range(args.runs):
        job = submit()
        RECORDING[0] = True
        started = time.perf_counter()
        tasks.generate(job.id)
        worker_s.append(time.perf_counter() - started)
        RECORDING[0] = False
        direct_s.append(direct_call(job))

    w, d = statistics.median(worker_s), statistics.median(direct_s)
    print(f"model {args.model}, {job.width}x{job.height}, {job.steps} steps, {args.runs} runs (medians)")
    print(f"  direct pipeline call        {d * 1000:8.1f} ms")
    print(f"  worker task, in process     {w * 1000:8.1f} ms")
    for label, samples in PARTS.items():
        if samples:
            print(f"    {label:36s}{statistics.median(samples) * 1000:8.1f} ms")
    print(f"worker-only / direct (in process): {w / d:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
