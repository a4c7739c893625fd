"""Where each object lives: every storage key is built here and nowhere else."""

from __future__ import annotations


def image_key(user_id: int, job_id: str, index: int) -> str:
    return f"images/{user_id}/{job_id}/{index}.png"


def thumbnail_key(user_id: int, job_id: str, index: int) -> str:
    """The image's small WebP, next to its PNG."""
    return f"images/{user_id}/{job_id}/{index}.thumb.webp"


def input_key(user_id: int, job_id: str, name: str) -> str:
    """A job's input image (``source`` or ``mask``), kept with the job for the worker."""
    return f"inputs/{user_id}/{job_id}/{name}.png"


def preview_key(user_id: int, job_id: str) -> str:
    return f"previews/{user_id}/{job_id}.jpg"
