"""A worker's console says what it does: the libraries' notices that mean nothing to an
operator are filtered where they are raised, each by its logger or warning category
and its own words, so anything else those libraries say (an error, a new warning) still
shows.

What is filtered, and why it is noise here:

- Celery's SecurityWarning about running as root: its risk is a pickled message run as
  root, and our queues accept JSON only (``accept_content``); with pickle accepted the
  warning stays (and Celery refuses to start as root anyway without C_FORCE_ROOT).
- transformers' "requires torchvision (not installed); falling back to ...Pil": the
  pipelines' image processors (the safety checker's) work on the Pillow backend.
- diffusers' "Expected types for vae: AutoencoderKL, got AutoencoderTiny": AutoencoderTiny
  (TAESD, the demo model's VAE) is a VAE Stable Diffusion pipelines run with.
- diffusers' "The config attributes {'block_out_channels': ...} were passed to
  AutoencoderTiny": AutoencoderTiny writes that key itself when it is saved.
- the loading progress bars (diffusers, transformers): in a log they are lines of
  carriage returns.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable

# (logger, what its message says): each an exact notice, nothing else from the logger.
NOTICES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "transformers.utils.import_utils",
        re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+Pil`"),
    ),
    (
        "diffusers.pipelines.pipeline_utils",
        re.compile(r"Expected types for vae: .*AutoencoderKL.*, got .*AutoencoderTiny"),
    ),
    (
        "diffusers.configuration_utils",
        re.compile(r"The config attributes \{'block_out_channels': [^}]*\} were passed to AutoencoderTiny,"),
    ),
)
ROOT_WARNING = r"You're running the worker with superuser privileges"


class DropNotice(logging.Filter):
    """Drops the records of one logger whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern[str]):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_library_notices() -> None:
    """Filter the notices in NOTICES on their own loggers (once, however often called)."""
    for name, pattern in NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotice) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(DropNotice(pattern))


def allow_root_without_pickle(accept_content: Iterable[str]) -> None:
    """Ignore Celery's warning about running as root when no pickle is accepted (see above)."""
    if any("pickle" in c or "python-serialize" in c for c in accept_content):
        return
    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", message=ROOT_WARNING, category=SecurityWarning)


def no_loading_progress_bars() -> None:
    """diffusers' and transformers' own switches for their loading progress bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
