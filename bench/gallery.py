"""Gallery speed: does the first page of each filter stay flat as a gallery grows?

Seeds one user's gallery with 1,000 and with 100,000 images straight into fresh
databases (Core bulk inserts, no model, no files), then times the first page of each
single filter and of the prompt search through `gallery.search.list_images` (the
query and the rows the page renders), both sizes side by side in one run. Prints, per
query, the median and p95 in ms at each size and the ratio 100k/1k of the medians
(goal <= 1.5).

    .venv/bin/python bench/gallery.py                      # SQLite (the default)
    .venv/bin/python bench/gallery.py --postgres postgresql+psycopg://USER:PASS@HOST:5432/postgres
    .venv/bin/python bench/gallery.py --sizes 1000,20000 --repeat 50
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from app.accounts.models import User  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import _engine_for, transaction  # noqa: E402
from app.gallery import search  # noqa: E402
from app.gallery.models import Collection, CollectionImage, Image, aspect_of  # noqa: E402
from app.generation.models import Job  # noqa: E402
from app.migrate import upgrade  # noqa: E402

GOAL = 1.5
SUBJECTS = (
    "lighthouse cat mountain harbour forest robot castle garden city dragon "
    "teapot violin desert glacier market owl bridge orchard tram island"
).split()
STYLES = ["gouache", "watercolour", "oil painting", "ink sketch", "photograph", "pixel art", "pastel", "linocut"]
TIMES = ["at dusk", "at dawn", "in the rain", "under snow", "at noon", "by moonlight"]
MODES = [("txt2img", 70), ("img2img", 10), ("inpaint", 5), ("outpaint", 5), ("variation", 7), ("upscale", 3)]
MODELS = ["models/gouache-demo", "stabilityai/sd-turbo", "runwayml/sd-v1-5"]
SIZES = [((512, 512), 50), ((512, 768), 25), ((768, 512), 25)]
SPACING = timedelta(minutes=15)  # 100k images span about three years
COMMON_RATE, COMMON = 0.5, "highly detailed"  # a word in half the prompts
RARE_RATE, RARE = 0.01, "kintsugi"  # and one in 1 in 100
COLLECTION_EVERY = 50  # one image in 50 is in the collection
FAVOURITE_RATE = 0.03


def seed(settings: Settings, n: int, rng: random.Random) -> dict:
    """n images for one new user, newest now; returns what the queries filter on."""
    now = datetime.now(UTC)
    with transaction(settings) as session:
        user = User(email=f"bench-{uuid.uuid4().hex[:8]}@example.com", password_hash="-", balance=0)
        session.add(user)
        session.flush()
        owner = user.id
        collection = Collection(id=str(uuid.uuid4()), user_id=owner, name="Bench")
        session.add(collection)
    modes, mode_weights = zip(*MODES, strict=True)
    sizes, size_weights = zip(*SIZES, strict=True)
    chunk = 5000
    for start in range(0, n, chunk):
        jobs, images, members = [], [], []
        for i in range(start, min(n, start + chunk)):
            job_id, image_id = str(uuid.uuid4()), str(uuid.uuid4())
            created = now - SPACING * (n - 1 - i)
            mode = rng.choices(modes, mode_weights)[0]
            (width, height) = rng.choices(sizes, size_weights)[0]
            model = rng.choice(MODELS)
            prompt = f"a {rng.choice(SUBJECTS)} {rng.choice(TIMES)}, {rng.choice(STYLES)}"
            if rng.random() < COMMON_RATE:
                prompt += f", {COMMON}"
            if rng.random() < RARE_RATE:
                prompt += f", {RARE}"
            jobs.append(dict(id=job_id, user_id=owner, client_request_id=job_id, status="succeeded", mode=mode,
                             model=model, prompt=prompt, negative_prompt="", width=width, height=height, steps=20,
                             guidance=5.0, seed=i, n_images=1, sampler="euler", price=1, progress_step=20, error="",
                             licence="", cancel_requested=False, created_at=created))  # fmt: skip
            key = f"images/{owner}/{job_id}/0"
            images.append(dict(id=image_id, user_id=owner, job_id=job_id, index=0, storage_key=f"{key}.png",
                               thumbnail_key=f"{key}.thumb.webp", width=width, height=height,
                               seed=i, mode=mode, model=model, aspect=aspect_of(width, height),
                               favourite=rng.random() < FAVOURITE_RATE, created_at=created))  # fmt: skip
            if i % COLLECTION_EVERY == 0:
                members.append(
                    dict(collection_id=collection.id, image_id=image_id, image_created_at=created, added_at=created)
                )
        with transaction(settings) as session:
            session.execute(insert(Job.__table__), jobs)
            session.execute(insert(Image.__table__), images)
            if members:
                session.execute(insert(CollectionImage.__table__), members)
    middle = now - SPACING * (n // 2)
    return {"owner": owner, "collection": collection.id, "middle": middle.date()}


def queries(info: dict) -> dict[str, dict]:
    middle = info["middle"]
    return {
        "all (newest)": {},
        "all (oldest)": {"sort": "oldest"},
        "search common (50%)": {"q": "detailed"},
        "search 'lighthouse' (5%)": {"q": "lighthouse"},
        "search rare (1%)": {"q": RARE},
        "search 2 words (0.8%)": {"q": "light dusk"},
        "model": {"model": "runwayml/sd-v1-5"},
        "mode upscale (3%)": {"mode": "upscale"},
        "aspect portrait": {"aspect": "portrait"},
        "favourites (3%)": {"favourites": "1"},
        "date range (3 days)": {"date_from": (middle - timedelta(days=3)).isoformat(), "date_to": middle.isoformat()},
        "collection (2%)": {"collection": info["collection"]},
        "search 3 words (0.1%)": {"q": "tram dawn pastel"},
        "search 2nd page (5%)": {"q": "lighthouse", "page": 2},
        "combined: q+mode+aspect": {"q": "cat", "mode": "img2img", "aspect": "square"},
        "combined: q+favourites": {"q": "detailed", "favourites": "1"},
    }


def time_queries(galleries: list[tuple[Settings, dict]], repeat: int) -> list[dict[str, list[float]]]:
    """Each query's timings on every gallery, run by turns (small, large, small, ...), so that
    a busy moment on the machine weighs on both sizes alike."""
    timings: list[dict[str, list[float]]] = [{} for _ in galleries]

    def first_page(settings, info, filters, after):
        with transaction(settings) as session:
            started = time.perf_counter()
            page = search.list_images(session, info["owner"], filters, after)
            return (time.perf_counter() - started) * 1000, page

    def filter_menu(settings, info, _filters, _after):
        with transaction(settings) as session:
            started = time.perf_counter()
            options = search.model_options(session, info["owner"])
            return (time.perf_counter() - started) * 1000, options

    names = list(queries(galleries[0][1])) + ["model list (filter menu)"]
    for name in names:
        runs = []
        for settings, info in galleries:
            params = dict(queries(info).get(name, {}))
            filters = search.parse_filters(params)
            after = None
            for _ in range(params.pop("page", 1) - 1):  # a later page: its cursor, untimed
                with transaction(settings) as session:
                    after = search.list_images(session, info["owner"], filters, after).next_cursor
            runs.append((settings, info, filters, after))
        timed = filter_menu if name == "model list (filter menu)" else first_page
        for i in range(repeat + 3):
            for k, (settings, info, filters, after) in enumerate(runs):
                elapsed, result = timed(settings, info, filters, after)
                if timed is first_page:
                    assert result.images, f"{name}: no images on the first page"
                if i >= 3:  # warm-up runs are not counted
                    timings[k].setdefault(name, []).append(elapsed)
    return timings


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000", help="two gallery sizes, small then large")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per query")
    parser.add_argument("--postgres", default="", help="a PostgreSQL URL of a role that may create databases")
    args = parser.parse_args()
    small, large = (int(s) for s in args.sizes.split(","))
    rng = random.Random(6)
    tmp = Path(tempfile.mkdtemp(prefix="gouache-bench-"))
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT", poolclass=NullPool) if args.postgres else None
    galleries, made = [], []
    try:
        for n in (small, large):
            overrides = {}
            if admin is not None:
                name = f"gouache_bench_{n}_{uuid.uuid4().hex[:6]}"
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                made.append(name)
                overrides["database_url"] = admin.url.set(database=name).render_as_string(hide_password=False)
            settings = Settings(_env_file=None, data_dir=tmp / str(n), model="builtin:tiny-random", **overrides)
            upgrade(settings)
            started = time.perf_counter()
            info = seed(settings, n, rng)
            if admin is not None:
                with transaction(settings) as session:
                    session.connection().exec_driver_sql("ANALYZE")
            print(f"seeded {n:,} images in {time.perf_counter() - started:.1f} s", flush=True)
            galleries.append((settings, info))
        small_timings, large_timings = time_queries(galleries, args.repeat)
        results = {small: small_timings, large: large_timings}
        for settings, _ in galleries:
            _engine_for(settings.database_url).dispose()
    finally:
        if admin is not None:
            with admin.connect() as conn:
                for name in made:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()

    db = "PostgreSQL" if admin is not None else "SQLite"
    print(f"\nFirst page ({search.PAGE_SIZE} images) on {db}: ms (median, p95); ratio = median {large:,}/{small:,}")
    heads = (f"{small:,} med", f"{small:,} p95", f"{large:,} med", f"{large:,} p95")
    print(f"{'query':<26} {heads[0]:>10} {heads[1]:>10} {heads[2]:>11} {heads[3]:>11} {'ratio':>7}")
    worst = 0.0
    for name in results[small]:
        a, b = results[small][name], results[large][name]
        ratio = statistics.median(b) / statistics.median(a)
        worst = max(worst, ratio)
        flag = "" if ratio <= GOAL else "  over goal"
        print(f"{name:<26} {statistics.median(a):>10.2f} {p95(a):>10.2f} {statistics.median(b):>11.2f} "
              f"{p95(b):>11.2f} {ratio:>7.2f}{flag}")  # fmt: skip
    print(f"\nworst ratio {worst:.2f} (goal <= {GOAL})")


if __name__ == "__main__":
    main()
