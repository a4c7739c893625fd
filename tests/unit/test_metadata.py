"""Generated PNGs carry AUTOMATIC1111's parameters and the IPTC AI-generated label."""

from __future__ import annotations

from PIL import Image

from app.generation import metadata


def params(**changes) -> metadata.Parameters:
    values = dict(
        prompt="a red fox in the snow, gouache",
        negative_prompt="blurry, text",
        steps=30,
        sampler="DPM++ 2M Karras",
        guidance=7.5,
        seed=4242,
        width=512,
        height=768,
        model="Stable Diffusion 1.5",
        extra=(("Gouache job", "1234"),),
    )
    values.update(changes)
    return metadata.Parameters(**values)


def test_the_parameters_text_is_automatic1111s_format():
    assert params().a1111_text() == (
        "a red fox in the snow, gouache\n"
        "Negative prompt: blurry, text\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 4242, Size: 512x768, "
        "Model: Stable Diffusion 1.5, Gouache job: 1234"
    )
    assert "Negative prompt" not in params(negative_prompt="").a1111_text()


def test_a_png_round_trips_its_parameters_and_is_labelled_ai_generated():
    data = metadata.png_bytes(Image.new("RGB", (8, 8), "red"), params(prompt="line one\nline two"))
    chunks = metadata.read(data)
    parsed = metadata.parse_a1111(chunks["parameters"])
    assert parsed["prompt"] == "line one\nline two"
    assert parsed["negative_prompt"] == "blurry, text"
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"], parsed["Seed"]) == (
        "30",
        "DPM++ 2M Karras",
        "7.5",
        "4242",
    )
    assert parsed["Size"] == "512x768"
    xmp = chunks[metadata.XMP_KEY]
    assert (
        'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"' in xmp
    )


def test_a_model_name_with_commas_cannot_break_the_settings_line():
    parsed = metadata.parse_a1111(params(model="SD, fine-tuned, v2").a1111_text())
    assert parsed["Model"] == "SD fine-tuned v2" and parsed["Seed"] == "4242"
