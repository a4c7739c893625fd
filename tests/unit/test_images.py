"""Uploads, masks and outpainting geometry: refused with a message, or shaped for the model."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from app.errors import UserError
from app.generation import images
from app.generation.images import UploadLimits
from app.generation.schemas import Extend

LIMITS = UploadLimits(max_bytes=2_000_000, max_pixels=4096 * 4096)


def png(size=(64, 48), colour="red", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (its data is truncated)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def refusal(data: bytes, limits=LIMITS) -> str:
    with pytest.raises(UserError) as excinfo:
        images.open_upload(data, field="image", label="the image", limits=limits)
    assert excinfo.value.field == "image"
    return str(excinfo.value)


def test_a_png_upload_is_decoded():
    image = images.open_upload(png(), field="image", label="the image", limits=LIMITS)
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "Choose the image to upload"),
        (b"%PDF-1.7 not an image", "is not an image we can read"),
        (b"GIF89a" + b"\0" * 40, "is not an image we can read"),
        (bomb_png(100_000, 100_000), "the limit is 17 megapixels"),
    ],
)
def test_uploads_that_are_not_usable_images_are_refused(data, message):
    assert message in refusal(data)


def test_a_gif_is_refused_by_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    assert "must be a PNG, JPEG or WebP" in refusal(buf.getvalue())


def test_too_many_bytes_is_refused_before_decoding():
    assert "the limit is 0 MB" in refusal(png(), UploadLimits(max_bytes=100, max_pixels=10**8))


def test_images_are_fitted_to_the_models_size_and_multiple():
    fitted = images.fit_to_model(Image.new("RGB", (1600, 900)), default_size=512, max_size=768, multiple=8)
    w, h = fitted.size
    assert w % 8 == 0 and h % 8 == 0 and w <= 768
    assert abs(w * h - 512 * 512) / (512 * 512) < 0.05
    assert abs(w / h - 16 / 9) < 0.03
    tall = images.fit_to_model(Image.new("RGB", (100, 1000)), default_size=512, max_size=768, multiple=64)
    assert tall.size[1] == 768 and tall.size[0] % 64 == 0


def test_a_mask_is_binarised_and_must_match_its_image():
    mask = Image.new("L", (64, 48), 0)
    mask.paste(200, (10, 10, 20, 20))
    binary = images.mask_from_upload(mask, (64, 48))
    assert binary.getbbox() == (10, 10, 20, 20) and set(binary.getdata()) == {0, 255}

    scaled = images.mask_from_upload(mask.resize((128, 96)), (64, 48))  # same shape, other size
    assert scaled.size == (64, 48)

    with pytest.raises(UserError) as excinfo:
        images.mask_from_upload(Image.new("L", (64, 64), 255), (64, 48))
    assert "The mask is 64×64 but the image is 64×48" in str(excinfo.value)
    with pytest.raises(UserError, match="The mask is empty"):
        images.mask_from_upload(Image.new("L", (64, 48), 0), (64, 48))


def test_a_painted_transparent_layer_is_a_mask():
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 8, 8))
    assert images.mask_from_upload(layer, (32, 32)).getbbox() == (0, 0, 8, 8)


def test_outpainting_extends_the_canvas_and_masks_the_new_area_and_the_seam():
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    canvas, mask = images.outpaint_canvas(source, Extend(right=32, bottom=16), overlap=8)
    assert canvas.size == mask.size == (96, 80)
    # kept: the old image away from the extended sides
    assert mask.getpixel((10, 10)) == 0 and canvas.getpixel((10, 10)) == (200, 30, 30)
    # repainted: the new area and an 8-pixel seam into the old image
    assert mask.getpixel((90, 40)) == 255 and mask.getpixel((60, 10)) == 255 and mask.getpixel((55, 10)) == 0
    assert mask.getpixel((10, 60)) == 255 and mask.getpixel((10, 50)) == 0
    # the new area starts from the image's stretched edge colours, not black
    assert canvas.getpixel((94, 78)) == (200, 30, 30)


def test_outpainting_rounds_to_the_models_multiple_and_needs_a_side():
    canvas, _ = images.outpaint_canvas(Image.new("RGB", (64, 64)), Extend(left=10), multiple=8)
    assert canvas.size == (80, 64)
    with pytest.raises(UserError, match="at least one side"):
        images.outpaint_canvas(Image.new("RGB", (64, 64)), Extend())
