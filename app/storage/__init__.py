"""Object storage behind one small interface (base.py): the filesystem for the
embedded default, any S3-compatible store for scale-out. The backend is chosen
here, in :func:`get_storage`; keys are built in keys.py."""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

from app.config import Settings
from app.storage.base import ObjectNotFound, Storage
from app.storage.filesystem import FilesystemStorage
from app.storage.keys import image_key, input_key, preview_key, thumbnail_key

__all__ = [
    "ObjectNotFound",
    "Storage",
    "get_storage",
    "image_key",
    "input_key",
    "preview_key",
    "thumbnail_key",
]


_making = threading.Lock()


def get_storage(settings: Settings) -> Storage:
    """The store the settings name, made once per process for each storage configuration
    (a boto3 client is slow to make and keeps its connection pool)."""
    if settings.storage_dir is None:  # Settings fills it in; only a hand-made copy can lack it
        raise ValueError("settings.storage_dir is not set")
    with _making:  # boto3 makes clients from a default session that is not thread-safe
        return _store(
            settings.storage, settings.storage_dir, settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region
        )


@lru_cache(maxsize=16)
def _store(kind: str, storage_dir: Path, bucket: str, endpoint_url: str | None, region: str) -> Storage:
    if kind == "s3":
        from app.storage.s3 import S3Storage  # boto3 is imported only where S3 is configured

        return S3Storage(bucket=bucket, endpoint_url=endpoint_url, region=region)
    return FilesystemStorage(storage_dir)


def _forget_in_child() -> None:
    """A forked worker child must not share its parent's connection pool: it makes its own."""
    global _making
    _making = threading.Lock()
    _store.cache_clear()


os.register_at_fork(after_in_child=_forget_in_child)
