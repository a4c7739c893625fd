"""Midjourney-style parameters typed at the end of a prompt.

``"a lighthouse at dusk --ar 16:9 --seed 42 --no text, blur --steps 30 --n 4"``
becomes the prompt ``"a lighthouse at dusk"`` and the form fields
``{"aspect": "16:9", "seed": "42", "negative_prompt": "text, blur", "steps": "30", "n": "4"}``.
Values stay strings: :func:`app.generation.schemas.parse_request` validates them
exactly as if they had come from the form's own fields, so the messages match.

Typed parameters win over the form's fields, as in Midjourney. An unknown
parameter, a missing value or a parameter given twice is a :class:`UserError`
naming it, never silently ignored.
"""

from __future__ import annotations

import re

from app.errors import UserError

# parameter (and aliases) -> form field
FIELDS = {
    "ar": "aspect",
    "aspect": "aspect",
    "seed": "seed",
    "no": "negative_prompt",
    "steps": "steps",
    "n": "n",
    "images": "n",
    "guidance": "guidance",
    "cfg": "guidance",
    "sampler": "sampler",
    "size": "size",
    "strength": "strength",
}
# Parameters whose value is the rest of the text up to the next parameter (it may hold spaces).
_TEXT_VALUES = {"negative_prompt", "sampler"}

# "--ar" and also "—ar": phones and macOS turn a typed "--" into an em dash.
PARAM = re.compile(r"(?:^|\s)(?:--|—)([A-Za-z][\w-]*)")


def split(prompt: str) -> tuple[str, dict[str, str]]:
    """``(prompt without parameters, {form field: raw value})``."""
    matches = list(PARAM.finditer(prompt))
    if not matches:
        return prompt.strip(), {}
    text = prompt[: matches[0].start()].strip()
    fields: dict[str, str] = {}
    for i, match in enumerate(matches):
        name = match.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(prompt)
        value = prompt[match.end() : end].strip()
        field = FIELDS.get(name)
        if field is None:
            known = ", ".join(f"--{p}" for p in sorted(FIELDS))
            raise UserError(f"Unknown parameter --{name}. Known parameters: {known}.", field="prompt")
        if not value:
            raise UserError(f"--{name} needs a value, e.g. {_example(name)}.", field="prompt")
        if field not in _TEXT_VALUES and len(value.split()) > 1:
            raise UserError(
                f"--{name} takes one value (got {value!r}); put the prompt's text before the parameters.",
                field="prompt",
            )
        if field in fields:
            raise UserError(f"--{name} is given twice.", field="prompt")
        fields[field] = value
    return text, fields


def _example(name: str) -> str:
    return {
        "ar": "--ar 16:9",
        "aspect": "--aspect 3:2",
        "seed": "--seed 42",
        "no": "--no text, blur",
        "steps": "--steps 30",
        "n": "--n 4",
        "images": "--images 4",
        "guidance": "--guidance 7",
        "cfg": "--cfg 7",
        "sampler": "--sampler euler_a",
        "size": "--size 768x512",
        "strength": "--strength 0.6",
    }.get(name, f"--{name} 1")


def apply(form: dict) -> dict:
    """The form with the prompt's typed parameters moved into their fields."""
    prompt = form.get("prompt")
    if not isinstance(prompt, str):
        return form
    text, fields = split(prompt)
    if not fields:
        return form
    merged = dict(form, prompt=text, **fields)
    if "aspect" in fields or "size" in fields:
        # a typed ratio or size replaces the form's size and its width/height
        for key in ("size", "width", "height", "aspect"):
            if key not in fields:
                merged.pop(key, None)
    return merged
