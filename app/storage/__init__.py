"""Object storage behind one small interface: the filesystem for the embedded
default, any S3-compatible store for scale-out. Keys are built only here."""

from __future__ import annotations

from typing import Protocol

from app.config import Settings


class ObjectNotFound(KeyError):
    pass


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


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


def get_storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        from app.storage.s3 import S3Storage

        return S3Storage(bucket=settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    from app.storage.filesystem import FilesystemStorage

    return FilesystemStorage(settings.storage_dir)
