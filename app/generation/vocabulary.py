"""Which words of a prompt a model has never seen, for the form to warn about before a
job is charged (a model's catalog entry may declare its ``vocabulary``).

Small words that carry no picture (stop words) and typed parameters (``--ar 16:9``) are
never reported; a plural counts as known when its singular is.
"""

from __future__ import annotations

import re

from app.errors import UserError
from app.generation import prompt_params
from app.generation.catalog import ModelSpec

STOP_WORDS = frozenset(
    """a an the and or of in on at to with by for from into onto over under near next
    is are be it its this that these those some any very please
    some each both""".split()
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_PARAM_START = re.compile(r"(?:^|\s)(?:--|—)[A-Za-z]")


def prompt_text(prompt: str) -> str:
    """The prompt without its typed parameters (also while they are half typed)."""
    try:
        return prompt_params.split(prompt)[0]
    except UserError:  # "--n" with no value yet: the form reports that itself
        match = _PARAM_START.search(prompt)
        return prompt[: match.start()] if match else prompt


def _known(word: str, vocabulary: frozenset[str]) -> bool:
    if word in vocabulary or word in STOP_WORDS:
        return True
    for suffix in ("es", "s"):  # "stars" → "star", "boxes" → "box"
        if word.endswith(suffix) and word[: -len(suffix)] in vocabulary:
            return True
    return False


def unknown_words(model: ModelSpec, prompt: str) -> list[str]:
    """The prompt's words (lowercase, each once, in order) outside the model's declared
    vocabulary; none for a model that declares no vocabulary."""
    if not model.vocabulary or not prompt:
        return []
    vocabulary = frozenset(model.vocabulary)
    unknown: list[str] = []
    for match in _WORD.finditer(prompt_text(prompt)):
        word = match.group(0).lower().replace("’", "'")
        if not _known(word, vocabulary) and word not in unknown:
            unknown.append(word)
    return unknown
