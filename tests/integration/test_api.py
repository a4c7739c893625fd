"""The native JSON API as a script uses it: list jobs, read the balance and the ledger,
walk the gallery with its filters, fetch an image's metadata and file, organise
collections, follow a job's events. One error shape for every status; nobody reaches
another user's things."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image as PILImage

from app.generation import events
from tests.gallery_data import add_image, user_id
from tests.support import Browserless, make_settings, migrated

GENERATION = {"prompt": "a lighthouse at dusk", "size": "64x64", "steps": 4}


@pytest.fixture
def uncapped(tmp_path, tiny_model_path):
    return migrated(make_settings(tmp_path / "data", tiny_model_path, max_active_jobs_per_user=0))


@pytest.fixture
def ada(make_client, uncapped) -> Browserless:
    c = make_client(uncapped)
    c.sign_up("ada@example.com")
    return c


@pytest.fixture
def eve(ada) -> Browserless:
    c = Browserless(ada.http.app)
    c.sign_up("eve@example.com")
    return c


def submit(c: Browserless, **fields) -> dict:
    response = c.api_post("/api/v1/generations", {**GENERATION, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def call(c: Browserless, method: str, url: str, **kw):
    return c.http.request(method, url, headers={"X-CSRF-Token": c.csrf, **kw.pop("headers", {})}, **kw)


def parse_events(text: str) -> list[tuple[str, str, dict]]:
    """(id, event, data) of each event in a text/event-stream body (comments and retry skipped)."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            found.append((fields["id"], fields["event"], json.loads(fields["data"])))
    return found


# ---- the schema and the error shape ----------------------------------------------------------


def test_the_schema_holds_only_the_api_with_its_bodies_errors_and_the_bearer_scheme(client):
    schema = client.get("/api/openapi.json").json()
    assert schema["paths"] and all(path.startswith("/api/v1/") for path in schema["paths"])
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer gch_…`.",
    }
    generate = schema["paths"]["/api/v1/generations"]["post"]
    body = generate["requestBody"]["content"]
    assert {"prompt", "steps", "size", "mode", "source_image"} <= set(body["application/json"]["schema"]["properties"])
    assert {"image", "mask"} <= set(body["multipart/form-data"]["schema"]["properties"])
    assert {"Idempotency-Key"} <= {p["name"].title() for p in generate["parameters"]}
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for status in ("401", "402", "404", "422", "429"):
        assert generate["responses"][status]["content"]["application/json"]["schema"] == error
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's other error shape
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation["security"] == [{"bearer": []}], (method, path)
            if method == "post":
                assert "idempotency-key" in {p["name"].lower() for p in operation.get("parameters", [])}, path


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/api/v1/nothing-here", 404, "No such API endpoint: GET /api/v1/nothing-here."),
        ("GET", "/api/v1/generations/no-such-job", 404, "No such job."),
        ("PUT", "/api/v1/generations", 405, "PUT is not allowed here; use GET, POST."),
        ("DELETE", "/api/v1/models", 405, "DELETE is not allowed here; use GET."),
        ("GET", "/api/v1/generations?limit=0", 422, "limit: Input should be greater than or equal to 1"),
        ("GET", "/api/v1/images?after=garbage", 422, "That page link is broken; start again from the first page."),
    ],
)
def test_every_api_error_has_the_one_shape(ada, method, path, status, message):
    response = call(ada, method, path)
    assert response.status_code == status
    assert response.json()["error"] == message and set(response.json()) == {"error", "field"}
    if status == 405:
        assert response.headers["allow"]


def test_without_a_session_the_api_answers_401_never_a_redirect(client):
    for path in ("/api/v1/generations", "/api/v1/balance", "/api/v1/images", "/api/v1/collections"):
        response = client.get(path)
        assert response.status_code == 401 and set(response.json()) == {"error", "field"}
        assert "Authorization: Bearer gch_" in response.json()["error"]  # says how to authenticate


# ---- jobs ----------------------------------------------------------------------------------


def test_my_jobs_come_newest_first_in_keyset_pages_filtered_by_state(ada, eve):
    made = [submit(ada, prompt=f"job {i}")["id"] for i in range(5)]
    for job_id in made[:2]:
        assert ada.api_post(f"/api/v1/generations/{job_id}/cancel", {}).json()["status"] == "cancelled"
    submit(eve)

    walked, after = [], None
    while True:
        page = ada.get("/api/v1/generations", params={"limit": 2, **({"after": after} if after else {})}).json()
        walked += [job["id"] for job in page["items"]]
        if not (after := page["next_cursor"]):
            break
    assert walked == made[::-1]  # every job once, newest first, none of Eve's

    cancelled = ada.get("/api/v1/generations", params={"status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["items"]] == made[1::-1]
    both = ada.get("/api/v1/generations", params=[("status", "queued"), ("status", "cancelled")]).json()
    assert len(both["items"]) == 5
    bad = ada.get("/api/v1/generations", params={"status": "lost"})
    assert bad.status_code == 422 and bad.json()["field"] == "status"


def test_the_job_cap_answers_429_with_retry_after(make_client, tmp_path, tiny_model_path):
    settings = migrated(make_settings(tmp_path / "data", tiny_model_path, max_active_jobs_per_user=1))
    c = make_client(settings)
    c.sign_up("ada@example.com")
    submit(c)
    refused = c.api_post("/api/v1/generations", GENERATION)
    assert refused.status_code == 429 and refused.json()["error"].startswith("You already have 1 jobs")
    assert 1 <= int(refused.headers["retry-after"]) <= 300
    assert c.get("/api/v1/balance").json()["balance"] == 200 - 1  # the refused one held nothing


def test_another_users_jobs_are_not_found(ada, eve):
    job = submit(ada)
    for method, path in [
        ("GET", f"/api/v1/generations/{job['id']}"),
        ("GET", f"/api/v1/generations/{job['id']}/events"),
        ("GET", f"/api/v1/generations/{job['id']}/preview"),
        ("POST", f"/api/v1/generations/{job['id']}/cancel"),
    ]:
        assert call(eve, method, path).status_code == 404, path
    assert ada.get(f"/api/v1/generations/{job['id']}").json()["status"] == "queued"


# ---- the event stream --------------------------------------------------------------------


def test_a_finished_jobs_stream_sends_its_final_state_and_ends(ada):
    job = submit(ada)
    ada.api_post(f"/api/v1/generations/{job['id']}/cancel", {})
    with ada.http.stream("GET", f"/api/v1/generations/{job['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        body = response.read().decode()
    [(event_id, name, data)] = parse_events(body)
    assert (name, data["status"], data["id"]) == ("done", "cancelled", job["id"])
    # EventSource reconnects after a stream ends; having the final event, it is told to stop
    again = ada.get(f"/api/v1/generations/{job['id']}/events", headers={"Last-Event-ID": event_id})
    assert again.status_code == 204


class Job:
    """A job's states as the event stream's snapshots see them, one per read."""

    def __init__(self, *states: tuple[str, int]):
        self.states = list(states)
        self.reads = 0

    def snapshot(self) -> events.Event:
        status, step = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        if status in ("succeeded", "failed", "cancelled"):
            return events.Event("done", status, {"status": status}, final=True)
        return events.Event("progress", f"{status}.{step}", {"status": status, "step": step})


def collect(job: Job, **kw) -> list[bytes]:
    import anyio

    async def run() -> list[bytes]:
        options = dict(poll_s=0, keepalive_s=60.0, max_s=60.0) | kw
        return [chunk async for chunk in events.stream(job.snapshot, **options)]

    return anyio.run(run)


def test_the_stream_sends_only_changes_then_the_final_event():
    job = Job(("queued", 0), ("queued", 0), ("running", 1), ("running", 1), ("running", 3), ("succeeded", 4))
    sent = collect(job)
    assert sent[0].startswith(b"retry: ")
    names = [parse_events(chunk.decode()) for chunk in sent[1:]]
    assert [(e[0][0], e[0][1]) for e in names] == [
        ("queued.0", "progress"),
        ("running.1", "progress"),
        ("running.3", "progress"),
        ("succeeded", "done"),
    ]
    assert job.reads == 6  # and it stopped reading after the final event


def test_the_stream_keeps_an_idle_connection_alive_and_resumes_after_the_last_event_id():
    job = Job(("running", 2), ("running", 2), ("running", 2), ("succeeded", 4))
    sent = collect(job, keepalive_s=0, last_event_id="running.2")
    assert sent[1:] == [events.KEEPALIVE, events.KEEPALIVE, events.KEEPALIVE, sent[-1]]
    assert parse_events(sent[-1].decode())[0][1] == "done"


def test_the_stream_ends_when_its_time_is_up_so_the_client_reconnects():
    job = Job(("queued", 0))
    sent = collect(job, max_s=0)
    assert len(sent) == 2 and job.reads == 1


# ---- balance and ledger --------------------------------------------------------------------


def test_balance_and_ledger_pages_follow_the_money(ada):
    job = submit(ada)
    ada.api_post(f"/api/v1/generations/{job['id']}/cancel", {})
    assert ada.get("/api/v1/balance").json() == {"balance": 200}
    first = ada.get("/api/v1/ledger", params={"limit": 2}).json()
    assert [(e["kind"], e["amount"], e["job_id"]) for e in first["items"]] == [
        ("release", job["price"], job["id"]),
        ("hold", -job["price"], job["id"]),
    ]
    rest = ada.get("/api/v1/ledger", params={"after": first["next_cursor"]}).json()
    assert [(e["kind"], e["amount"]) for e in rest["items"]] == [("grant", 200)] and rest["next_cursor"] is None
    assert ada.get("/api/v1/ledger", params={"after": "bm9wZQ"}).status_code == 422


# ---- gallery, images, collections ------------------------------------------------------------


@pytest.fixture
def pictures(ada, uncapped):
    owner = user_id(uncapped, "ada@example.com")
    return {
        name: add_image(uncapped, owner, prompt, size=size)
        for name, prompt, size in [
            ("lighthouse", "a lighthouse at dusk", (64, 64)),
            ("cat", "a cat asleep", (64, 96)),
            ("harbour", "a harbour with a lighthouse", (96, 64)),
        ]
    }


def test_the_gallery_with_its_filters_search_and_pages(ada, pictures):
    everything = ada.get("/api/v1/images").json()
    assert [i["id"] for i in everything["items"]] == [pictures["harbour"], pictures["cat"], pictures["lighthouse"]]
    found = ada.get("/api/v1/images", params={"q": "lightho"}).json()["items"]
    assert {i["id"] for i in found} == {pictures["harbour"], pictures["lighthouse"]}
    portrait = ada.get("/api/v1/images", params={"aspect": "portrait"}).json()["items"]
    assert [i["id"] for i in portrait] == [pictures["cat"]]
    first = ada.get("/api/v1/images", params={"limit": 2, "sort": "oldest"}).json()
    rest = ada.get("/api/v1/images", params={"limit": 2, "sort": "oldest", "after": first["next_cursor"]}).json()
    assert [i["id"] for i in first["items"] + rest["items"]] == [
        pictures["lighthouse"],
        pictures["cat"],
        pictures["harbour"],
    ]
    bad = ada.get("/api/v1/images", params={"aspect": "round"})
    assert bad.status_code == 422 and bad.json()["field"] == "aspect"  # the gallery page's own message


def test_an_images_metadata_file_thumbnail_favourite_and_deletion(ada, pictures):
    cat = pictures["cat"]
    meta = ada.get(f"/api/v1/images/{cat}").json()
    assert (meta["prompt"], meta["width"], meta["height"], meta["aspect"]) == ("a cat asleep", 64, 96, "portrait")
    assert meta["collections"] == [] and meta["favourite"] is False
    png = ada.get(meta["url"])
    assert png.headers["content-type"] == "image/png"
    assert PILImage.open(io.BytesIO(png.content)).size == (64, 96)
    assert ada.get(meta["thumbnail_url"]).headers["content-type"] == "image/webp"
    liked = call(ada, "PATCH", f"/api/v1/images/{cat}", json={"favourite": True})
    assert liked.json()["favourite"] is True
    assert [i["id"] for i in ada.get("/api/v1/images?favourites=1").json()["items"]] == [cat]
    assert call(ada, "DELETE", f"/api/v1/images/{cat}").status_code == 204
    assert ada.get(f"/api/v1/images/{cat}").status_code == 404
    assert call(ada, "DELETE", f"/api/v1/images/{cat}").status_code == 404


def test_collections_are_made_once_per_idempotency_key_filled_emptied_and_deleted(ada, pictures):
    body = {"name": "Lighthouses", "image_ids": [pictures["lighthouse"]]}
    made = ada.api_post("/api/v1/collections", body, **{"Idempotency-Key": "make-lighthouses"})
    again = ada.api_post("/api/v1/collections", body, **{"Idempotency-Key": "make-lighthouses"})
    assert made.status_code == again.status_code == 201 and made.json() == again.json()
    collection = made.json()
    assert (collection["name"], collection["count"]) == ("Lighthouses", 1)
    clash = ada.api_post("/api/v1/collections", {"name": "lighthouses"})  # a new request: the name is taken
    assert clash.status_code == 422 and clash.json()["field"] == "name"

    url = f"/api/v1/collections/{collection['id']}"
    added = ada.api_post(f"{url}/images", {"image_ids": [pictures["harbour"], pictures["lighthouse"]]})
    assert added.json() == {"added": 1}
    assert ada.api_post(f"{url}/images", {"image_ids": [pictures["harbour"]]}).json() == {"added": 0}
    listed = ada.get("/api/v1/images", params={"collection": collection["id"]}).json()["items"]
    assert [i["id"] for i in listed] == [pictures["harbour"], pictures["lighthouse"]]
    assert ada.get(f"/api/v1/images/{pictures['harbour']}").json()["collections"] == [collection["id"]]
    assert call(ada, "DELETE", f"{url}/images/{pictures['lighthouse']}").status_code == 204
    renamed = call(ada, "PATCH", url, json={"name": "Harbours"}).json()
    assert (renamed["name"], renamed["count"], renamed["cover_image_id"]) == ("Harbours", 1, pictures["harbour"])
    assert [c["name"] for c in ada.get("/api/v1/collections").json()] == ["Harbours"]
    assert call(ada, "DELETE", url).status_code == 204
    assert ada.get(url).status_code == 404 and ada.get(f"/api/v1/images/{pictures['harbour']}").status_code == 200


def test_another_users_images_and_collections_are_not_found(ada, eve, pictures):
    collection = ada.api_post("/api/v1/collections", {"name": "Mine"}).json()
    image = pictures["cat"]
    for method, path, body in [
        ("GET", f"/api/v1/images/{image}", None),
        ("GET", f"/api/v1/images/{image}/file", None),
        ("GET", f"/api/v1/images/{image}/thumbnail", None),
        ("PATCH", f"/api/v1/images/{image}", {"favourite": True}),
        ("DELETE", f"/api/v1/images/{image}", None),
        ("GET", f"/api/v1/collections/{collection['id']}", None),
        ("PATCH", f"/api/v1/collections/{collection['id']}", {"name": "Theirs"}),
        ("DELETE", f"/api/v1/collections/{collection['id']}", None),
        ("POST", f"/api/v1/collections/{collection['id']}/images", {"image_ids": [image]}),
        ("GET", f"/api/v1/images?collection={collection['id']}", None),
    ]:
        response = call(eve, method, path, json=body) if body else call(eve, method, path)
        assert response.status_code == 404, (method, path)
    # Eve's own collection cannot take Ada's image either
    theirs = eve.api_post("/api/v1/collections", {"name": "Theirs"}).json()
    assert eve.api_post(f"/api/v1/collections/{theirs['id']}/images", {"image_ids": [image]}).status_code == 404
    assert eve.get("/api/v1/images").json() == {"items": [], "next_cursor": None}
    assert ada.get(f"/api/v1/images/{image}").json()["favourite"] is False


def test_the_api_docs_open_with_the_guide(client):
    """/api/docs shows a short guide above the reference: keys, the OpenAI client, the event stream."""
    guide = client.get("/api/openapi.json").json()["info"]["description"]
    assert "Authorization: Bearer gch_" in guide and 'OpenAI(base_url="https://YOUR-STUDIO/v1"' in guide
    assert "/events" in guide
    page = client.get("/api/docs")
    assert page.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page.text
