"""What a newcomer reads when `gouache dev` starts (issue 15, item 11): a few lines of our
own that say what runs where, none of the libraries' notices that mean nothing to an
operator, and "Gouache is running" only once the worker is ready. The libraries' notices
are filtered where they are raised, each exactly: the same loggers' other words still show."""

from __future__ import annotations

import logging
import os
import re
import signal
import warnings

import httpx
import pytest
from celery.exceptions import SecurityWarning

from app.cli import where_things_are
from app.config import REPO_ROOT
from app.main import create_app
from tests.processes import Output, free_port, session_members, start_gouache_dev
from tests.support import PASSWORD, Browserless, make_settings, migrated, settings_env, wait_for_job
from workers import logs

NOISE = {
    "Celery's warning about root": "superuser privileges",
    "transformers' torchvision fallback": "requires torchvision",
    "diffusers' torch_dtype deprecation": "torch_dtype",
    "diffusers' VAE type check": "Expected types for vae",
    "AutoencoderTiny's own config key": "were passed to AutoencoderTiny",
    "loading progress bars": "Loading pipeline components",
    "Celery's banner": "[config]",
    "uvicorn's start-up lines": "Uvicorn running on",
    "the supervisor's probes": "GET /healthz",
}


@pytest.mark.worker
def test_gouache_dev_says_what_runs_where_and_nothing_else(tmp_path):
    """A fresh install (the committed demo model), as `scripts/run` starts it."""
    settings = migrated(make_settings(tmp_path / "data"))
    port = free_port()
    proc = start_gouache_dev(settings_env(settings), port, REPO_ROOT)
    out = Output(proc, tmp_path / "dev.log")
    try:
        url = f"http://127.0.0.1:{port}/"
        out.wait_for(rf"Gouache is running at {re.escape(url)}", timeout=240)
        lines = [line.rstrip() for line in out.lines if line.strip()]
        banner = next(i for i, line in enumerate(lines) if "Gouache is running at" in line)
        data = settings.data_dir
        ours = [
            rf"^gouache dev: data in {re.escape(str(data))}: database SQLite gouache\.db, "
            r"broker SQLite broker\.sqlite, images objects/$",
            rf"^gouache dev: started web \(pid \d+\) on {re.escape(url)}$",
            r"^gouache dev: started worker \(pid \d+\) for model demo \(queue generate\.demo\)$",
            r"loading model .*gouache-demo on cpu \(float32\)$",
            r"^gouache dev: web is ready \(pid \d+",
            r"^gouache dev: worker is ready \(pid \d+",
        ]
        for pattern in ours:
            assert any(re.search(pattern, line) for line in lines[:banner]), (pattern, out.text)
        worker_ready = next(i for i, line in enumerate(lines) if "gouache dev: worker is ready" in line)
        assert worker_ready < banner, out.text  # the banner waits for the worker
        assert banner <= 12, out.text  # a newcomer reads a few lines, not a screenful

        # What the web itself says still shows: here, the link of a sign-up's confirmation email.
        with httpx.Client(base_url=url) as browser:
            browser.get("/login")
            signed_up = browser.post(
                "/signup",
                data={"email": "bo@example.com", "password": PASSWORD, "csrf_token": browser.cookies["gouache_csrf"]},
            )
            assert signed_up.status_code == 303, signed_up.text
        out.wait_for(r"no SMTP host set: email .* to bo@example\.com written to .*; link: http://", timeout=30)

        # The first job's loading and sampling are quiet too.
        client = Browserless(create_app(settings))
        client.sign_up("ada@example.com")
        submitted = client.api_post("/api/v1/generations", {"prompt": "a red circle", "steps": 2})
        assert submitted.status_code == 202, submitted.text
        job = wait_for_job(client, submitted.json()["id"])
        assert job["status"] == "succeeded", job["error"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        out.wait_for(r"worker \(pid \d+\) stopped", timeout=10)
        for what, words in NOISE.items():
            assert words not in out.text, f"{what} is back:\n{out.text}"
        assert not re.search(r"\w+Warning: ", out.text), out.text
    finally:
        for pid in session_members(proc.pid):  # only if the test failed half-way
            os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_the_where_line_hides_passwords_and_names_remote_parts(tmp_path):
    settings = make_settings(
        tmp_path / "data",
        database_url="postgresql+psycopg://gouache:s3cret@db:5432/gouache",
        broker_url="redis://:hunter2@redis:6379/0",
        storage="s3",
        s3_bucket="pictures",
        s3_endpoint_url="http://minio:9000",
    )
    line = where_things_are(settings)
    assert line == (
        f"data in {settings.data_dir}: database postgresql+psycopg://gouache:***@db:5432/gouache, "
        "broker redis://:***@redis:6379/0, images S3 bucket pictures at http://minio:9000"
    )
    assert "s3cret" not in line and "hunter2" not in line


@pytest.mark.parametrize(
    ("logger", "notice"),
    [
        (
            "transformers.utils.import_utils",
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` "
            "for backward compatibility.",
        ),
        (
            "diffusers.pipelines.pipeline_utils",
            "Expected types for vae: (<class 'diffusers.models.autoencoders.autoencoder_kl.AutoencoderKL'>,), "
            "got <class 'diffusers.models.autoencoders.autoencoder_tiny.AutoencoderTiny'>.",
        ),
        (
            "diffusers.configuration_utils",
            "The config attributes {'block_out_channels': [32, 32, 32, 32]} were passed to AutoencoderTiny, "
            "but are not expected and will be ignored.",
        ),
    ],
)
def test_each_notice_is_dropped_and_nothing_else_from_its_logger(caplog, logger, notice):
    logs.drop_library_notices()
    logs.drop_library_notices()  # twice: still one filter
    source = logging.getLogger(logger)
    assert sum(isinstance(f, logs.DropNotice) for f in source.filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger):
        source.warning(notice)
        source.warning("Expected types for unet: UNet2DConditionModel, got SomethingElse.")
        source.error("could not load the model")
    assert [r.getMessage() for r in caplog.records if r.name == logger] == [
        "Expected types for unet: UNet2DConditionModel, got SomethingElse.",
        "could not load the model",
    ]


def test_the_root_warning_is_ignored_only_without_pickle():
    root = "You're running the worker with superuser privileges: this is\nabsolutely not recommended!"
    for accept, shown in ((["json"], 0), (["json", "pickle"], 1)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            logs.allow_root_without_pickle(accept)
            warnings.warn(SecurityWarning(root), stacklevel=1)
            warnings.warn(SecurityWarning("some other security concern"), stacklevel=1)
        messages = [str(w.message) for w in seen]
        assert messages.count(root) == shown, accept
        assert "some other security concern" in messages
