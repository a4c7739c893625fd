"""An operator offers two models; a user picks the second, sees its licence beside it,
pays its price, and the job runs on the worker that serves that model alone."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.credits import ledger, pricing
from app.db import transaction
from app.generation.models import Job
from tests.support import make_settings, migrated, wait_for_job

CATALOG = """
[[models]]
id = "sd"
name = "Tiny SD"
source = "{sd}"
family = "sd1"
default_size = 64
max_size = 128
default_steps = 4
default_guidance = 7.0
licence.name = "CreativeML OpenRAIL-M"
licence.url = "https://huggingface.co/spaces/CompVis/stable-diffusion-license"
licence.commercial_use = true

[[models]]
id = "xl"
name = "Tiny XL"
source = "{xl}"
family = "sdxl"
default_size = 64
max_size = 96
default_steps = 3
max_steps = 6
default_guidance = 4.5
price_multiplier = 500.0  # tiny images cost the 1-credit floor: make the model's share visible
licence = {{ name = "Research Only Licence", url = "https://example.org/research-licence", commercial_use = false }}
"""


@pytest.fixture
def two_models(tmp_path, tiny_model_path, tiny_sdxl_model_path):
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG.format(sd=tiny_model_path, xl=tiny_sdxl_model_path))
    return migrated(make_settings(tmp_path / "data", tiny_model_path, model_catalog=path))


@pytest.fixture
def ada(two_models, make_client):
    c = make_client(two_models)
    c.sign_up("ada@example.com")
    return c


def balance(c) -> int:
    html = c.get("/").text
    return int(re.search(r'id="balance"[^>]*><strong>(\d+)</strong>', html).group(1))


def test_the_form_offers_each_model_with_its_licence(ada):
    page = ada.get("/").text
    picker = page[page.index('id="model-picker"') :]
    picker = picker[: picker.index("</fieldset>")]
    assert re.search(r'value="sd"\s+checked', picker) and 'value="xl"' in picker
    sd_at, xl_at = picker.index("Tiny SD"), picker.index("Tiny XL")
    sd_card, xl_card = picker[sd_at:xl_at], picker[xl_at:]
    assert 'href="https://huggingface.co/spaces/CompVis/stable-diffusion-license"' in sd_card
    assert "CreativeML OpenRAIL-M" in sd_card and "commercial use allowed" in sd_card
    assert 'href="https://example.org/research-licence"' in xl_card
    assert "Research Only Licence" in xl_card and "commercial use not allowed" in xl_card
    assert 'name="steps" type="number" min="1" max="100" value="4"' in page  # the default model's

    chosen = ada.get("/?model=xl&prompt=a+green+star").text
    assert re.search(r'value="xl"\s+checked', chosen)
    assert 'name="steps" type="number" min="1" max="6" value="3"' in chosen  # the chosen model's limits
    assert 'name="guidance" type="number" min="0" max="30" step="0.5" value="4.5"' in chosen
    assert "96×96" not in page and "a green star" in chosen


def test_the_live_quote_follows_the_chosen_model(two_models, ada):
    params = {"size": "64x64", "steps": "3", "n": "1"}
    sd = ada.get("/api/v1/quote", params={**params, "model": "sd"}).json()["credits"]
    xl = ada.get("/api/v1/quote", params={**params, "model": "xl"}).json()["credits"]
    same = dict(width=64, height=64, steps=3, n_images=1)
    assert sd == pricing.price(two_models, **same, multiplier=1.0)
    assert xl == pricing.price(two_models, **same, multiplier=500.0) > sd
    fragment = ada.get("/generate/quote", params={**params, "model": "xl"}).text
    assert f"<strong>{xl}</strong>" in fragment
    assert "choose one of: sd, xl" in ada.get("/generate/quote", params={**params, "model": "sdxl"}).text
    models = ada.get("/api/v1/models").json()
    assert [m["id"] for m in models] == ["sd", "xl"]
    assert models[1]["licence"] == {
        "name": "Research Only Licence",
        "url": "https://example.org/research-licence",
        "commercial_use": False,
    }


@pytest.mark.parametrize("model", ["sdxl", ""])
def test_an_unknown_model_is_refused_and_nothing_is_charged(two_models, ada, model):
    before = balance(ada)
    response = ada.api_post("/api/v1/generations", {"prompt": "a star", "model": model or 7})
    assert response.status_code == 422
    assert response.json()["field"] == "model"
    assert response.json()["error"] in (
        "Unknown model 'sdxl'; choose one of: sd, xl.",
        "Model must be a model id, as text.",
    )
    form = ada.form("/generate", {"prompt": "a star", "model": model or "nope", "request_id": "r1"})
    assert form.status_code == 422 and "Unknown model" in form.text
    assert balance(ada) == before
    with transaction(two_models) as session:
        assert session.scalars(select(Job)).all() == []
        assert [e.kind for e in session.scalars(select(ledger.LedgerEntry))] == ["grant"]


@pytest.mark.worker
def test_a_job_on_the_second_model_runs_on_its_own_worker_and_records_its_licence(
    two_models, tiny_sdxl_model, ada, start_worker
):
    worker = start_worker(two_models, models="xl")  # serves the second model only
    assert "serving models: xl" in worker.log_path.read_text()

    xl = ada.api_post("/api/v1/generations", {"prompt": "a green star", "model": "xl", "seed": 5})
    sd = ada.api_post("/api/v1/generations", {"prompt": "a red circle"})  # the default model: no worker for it
    assert xl.status_code == sd.status_code == 202
    assert (xl.json()["model"], xl.json()["licence"]) == ("xl", "Research Only Licence")
    assert (sd.json()["model"], sd.json()["licence"]) == ("sd", "CreativeML OpenRAIL-M")
    # The job keeps its licence's terms, whatever the catalog says later.
    assert (xl.json()["licence_url"], xl.json()["licence_commercial_use"]) == (
        "https://example.org/research-licence",
        False,
    )
    assert sd.json()["licence_commercial_use"] is True

    done = wait_for_job(ada, xl.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert (done["width"], done["steps"], done["guidance"]) == (64, 3, 4.5)  # the XL entry's defaults
    assert done["price"] == pricing.price(two_models, width=64, height=64, steps=3, n_images=1, multiplier=500.0)
    assert ada.get(f"/api/v1/generations/{sd.json()['id']}").json()["status"] == "queued"  # its queue has no worker

    image_id = done["images"][0]["id"]
    png = PILImage.open(io.BytesIO(ada.get(f"/images/{image_id}.png").content))
    assert "Model: Tiny XL" in png.text["parameters"] and "Licence: Research Only Licence" in png.text["parameters"]
    detail = ada.get(f"/gallery/{image_id}").text
    assert "Tiny XL" in detail
    assert '<a href="https://example.org/research-licence"' in detail and "Research Only Licence" in detail
    assert "Commercial use not allowed" in detail
    # The remix buttons stay on the image's model.
    assert detail.count('name="model" value="xl"') == 4
