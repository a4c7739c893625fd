"""The bulk download: the selected originals and what they were made with, as one zip
streamed a file at a time."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.config import Settings
from app.gallery.service import owned_images
from app.storage import ObjectNotFound, get_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZipEntry:
    name: str
    key: str
    about: dict[str, Any]


def zip_entries(
    session: Session, user_id: int, image_ids: Iterable[str], model_name: Callable[[str], str]
) -> list[ZipEntry]:
    """What a bulk download holds: each original PNG (its generation parameters embedded)
    and, in ``images.json``, the same facts for every file (``model_name`` names the model
    for people)."""
    entries = []
    for image in owned_images(session, user_id, image_ids):
        job = image.job
        stamp = image.created_at.strftime("%Y%m%d-%H%M%S")
        entries.append(
            ZipEntry(
                name=f"gouache-{stamp}-{image.seed}-{image.id[:8]}.png",
                key=image.storage_key,
                about={
                    "id": image.id,
                    "prompt": job.prompt,
                    "negative_prompt": job.negative_prompt,
                    "mode": image.mode,
                    "model": model_name(image.model),
                    "width": image.width,
                    "height": image.height,
                    "steps": job.steps,
                    "guidance": job.guidance,
                    "sampler": job.sampler,
                    "seed": image.seed,
                    "strength": job.strength,
                    "created_at": image.created_at.isoformat(),
                    "favourite": image.favourite,
                },
            )
        )
    return entries


class _Sink(io.RawIOBase):
    """A write-only stream that hands back what was written since the last drain."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_stream(settings: Settings, entries: list[ZipEntry]) -> Iterator[bytes]:
    """The zip, built and sent one file at a time (never the whole archive in memory)."""
    storage = get_storage(settings)
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        manifest = []
        for entry in entries:
            try:
                data = storage.get(entry.key)
            except ObjectNotFound:
                log.warning("zip: %s is missing from storage; skipped", entry.key)
                continue
            archive.writestr(entry.name, data)  # PNG is compressed already
            manifest.append({"file": entry.name, **entry.about})
            yield sink.drain()
        archive.writestr("images.json", json.dumps(manifest, indent=2), compress_type=zipfile.ZIP_DEFLATED)
    yield sink.drain()
