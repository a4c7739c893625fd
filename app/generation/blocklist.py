"""The prompt blocklist: words and phrases this studio's content policy refuses.

The operator lists them in ``GOUACHE_PROMPT_BLOCKLIST`` (comma-separated) and/or in the file
named by ``GOUACHE_PROMPT_BLOCKLIST_FILE`` (one per line; ``#`` starts a comment). Both are
empty by default: what a studio refuses depends on its audience, its models and its laws,
and a word list shipped to everyone would refuse innocent prompts somewhere.
``docs/prompt-blocklist.example.txt`` is a starting point.

An entry matches as whole words, ignoring case and compatibility forms (NFKC: full-width and
styled letters read as plain ones), anywhere in the prompt: "gore" refuses "blood and GORE"
but not "a gorilla" (nor "gores": list each form meant). Only the prompt is checked: a
negative prompt names what the image must *not* show ("nsfw, gore" is a common one), so
refusing its words would refuse careful users.

The check runs when a request is parsed (``schemas.parse_quote``), before any price is held
or job made; the file is read again when it changes.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.errors import ServiceUnavailable, UserError

log = logging.getLogger(__name__)


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True)
class Blocklist:
    entries: tuple[str, ...]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, entries: list[str]) -> Blocklist:
        unique = tuple(dict.fromkeys(e for e in (" ".join(_normal(x).split()) for x in entries) if e))
        if not unique:
            return cls((), None)
        # longest first, so "red wine" wins over "red"; spaces match any run of whitespace
        alternatives = (r"\s+".join(map(re.escape, e.split())) for e in sorted(unique, key=len, reverse=True))
        return cls(unique, re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)"))

    def find(self, prompt: str) -> str | None:
        """The first blocked word or phrase in ``prompt`` (as matched), or None."""
        if self.pattern is None:
            return None
        found = self.pattern.search(_normal(prompt))
        return " ".join(found.group(0).split()) if found else None


def _read(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


_loaded: dict[tuple[str, str, int], Blocklist] = {}
_last_good: dict[tuple[str, str], Blocklist] = {}


def get_blocklist(settings: Settings) -> Blocklist:
    """The settings' blocklist, parsed once (and again when the file changes)."""
    path = settings.prompt_blocklist_file
    source = (settings.prompt_blocklist, str(path or ""))
    try:
        key = (*source, path.stat().st_mtime_ns if path else 0)
        if key not in _loaded:
            words = settings.prompt_blocklist.split(",") + (_read(path) if path else [])
            _loaded[key] = _last_good[source] = Blocklist.of(words)
        return _loaded[key]
    except (OSError, UnicodeDecodeError) as exc:
        if source in _last_good:  # keep the policy we had rather than let everything through
            log.error("prompt blocklist %s could not be read (%s); using the last good copy", path, exc)
            return _last_good[source]
        log.error("prompt blocklist %s could not be read: %s", path, exc)
        raise ServiceUnavailable("Prompts can't be checked right now; try again shortly.") from None


def check_prompt(prompt: str, settings: Settings) -> None:
    """Refuse (422, on the prompt field) a prompt with a blocked word or phrase."""
    word = get_blocklist(settings).find(prompt)
    if word is not None:
        raise UserError(
            f"This prompt can't be used here: “{word}” is not allowed by this studio's content policy.",
            field="prompt",
        )
