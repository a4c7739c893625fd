"""`gouache generate`: images from the command line, through the worker's own loading code."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from app.config import get_settings
from tests.support import settings_env
from workers.cli import cli

pytestmark = pytest.mark.model  # runs models in this process (torch)


def run_generate(settings, *args):
    get_settings.cache_clear()
    try:
        env = {k: v for k, v in settings_env(settings).items() if k.startswith("GOUACHE_")}
        return CliRunner().invoke(cli, ["generate", *args], env=env)
    finally:
        get_settings.cache_clear()


def test_generate_writes_pngs_and_the_same_seed_gives_the_same_image(settings, tiny_model, tmp_path):
    first = run_generate(settings, "a red circle", "--seed", "7", "--steps", "3", "--out", str(tmp_path / "a.png"))
    again = run_generate(settings, "a red circle", "--seed", "7", "--steps", "3", "--out", str(tmp_path / "b.png"))
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert "seed 7" in first.output
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.size == (64, 64)  # the model's default size from the settings
    assert a.tobytes() == b.tobytes()


def test_generate_several_images_and_sizes(settings, tiny_model, tmp_path):
    result = run_generate(
        settings,
        "a blue star",
        "--n",
        "2",
        "--width",
        "96",
        "--height",
        "64",
        "--steps",
        "2",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "star.png"),
    )
    assert result.exit_code == 0, result.output
    assert "seed 1" in result.output and "seed 2" in result.output
    for i in (1, 2):
        assert Image.open(tmp_path / f"star-{i}.png").size == (96, 64)


def test_generate_refuses_sizes_that_are_not_multiples_of_8(settings, tmp_path):
    result = run_generate(settings, "x", "--width", "100", "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "multiples of 8" in result.output
    assert not (tmp_path / "x.png").exists()
