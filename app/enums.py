"""Names every domain shares: generation modes, samplers and job statuses.

They live below ``generation`` and ``gallery`` so that both import them downward.
Each is a ``StrEnum``: members are the strings stored in the database and sent in
forms, so ``job.status == JobStatus.QUEUED`` and ``mode in Mode`` just work.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"
    VARIATION = "variation"
    UPSCALE = "upscale"

    @property
    def label(self) -> str:
        return _MODE_LABELS[self]


_MODE_LABELS = {
    Mode.TXT2IMG: "Text to image",
    Mode.IMG2IMG: "Image to image",
    Mode.INPAINT: "Inpaint",
    Mode.OUTPAINT: "Outpaint",
    Mode.VARIATION: "Variations",
    Mode.UPSCALE: "Upscale",
}

# Mode id -> label, in the order the form offers them.
MODES: dict[str, str] = {mode.value: mode.label for mode in Mode}
IMAGE_MODES = frozenset(Mode) - {Mode.TXT2IMG}


class Sampler(StrEnum):
    """The samplers AUTOMATIC1111 and DreamStudio users know. The worker maps each to a
    diffusers scheduler built from the model's own scheduler config."""

    EULER = "euler"
    EULER_A = "euler_a"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    DDIM = "ddim"
    UNIPC = "unipc"

    @property
    def label(self) -> str:
        return _SAMPLER_LABELS[self]


_SAMPLER_LABELS = {
    Sampler.EULER: "Euler",
    Sampler.EULER_A: "Euler a",
    Sampler.DPMPP_2M_KARRAS: "DPM++ 2M Karras",
    Sampler.DDIM: "DDIM",
    Sampler.UNIPC: "UniPC",
}

# Sampler id -> the name users know.
SAMPLERS: dict[str, str] = {sampler.value: sampler.label for sampler in Sampler}
DEFAULT_SAMPLER = Sampler.EULER


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
