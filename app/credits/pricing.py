"""The one price function. The quote in the form, the API's quote and the charge
all come from :func:`price`.

Per image, in the spirit of DreamStudio and AI Horde::

    credits = ceil(base * (steps / ref_steps) * (pixels / ref_pixels) ** exponent * multiplier)

with a floor of ``price_min_credits_per_image``; a request costs that times
the image count. Linear in steps, super-linear in pixels (attention cost grows
faster than the pixel count). Every constant is a setting.
"""

from __future__ import annotations

import math

from app.config import Settings


def price_per_image(settings: Settings, *, width: int, height: int, steps: int, multiplier: float) -> int:
    pixels_ratio = (width * height) / settings.price_ref_pixels
    raw = (
        settings.price_base_credits
        * (steps / settings.price_ref_steps)
        * pixels_ratio**settings.price_pixel_exponent
        * multiplier
    )
    # Round up, ignoring float noise like 10.000000000001.
    credits = math.ceil(round(raw, 6))
    return max(settings.price_min_credits_per_image, credits)


def price(settings: Settings, *, width: int, height: int, steps: int, n_images: int, multiplier: float) -> int:
    """Credits for a request of ``n_images`` images of ``width``×``height`` at ``steps``, at a
    model's price ``multiplier`` (the catalog entry's)."""
    return n_images * price_per_image(settings, width=width, height=height, steps=steps, multiplier=multiplier)
