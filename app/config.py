"""One settings object for the web process, the workers and the CLI.

Every value comes from an environment variable with the ``GOUACHE_`` prefix
(or a ``.env`` file). The defaults are the embedded deployment: everything
lives under one data directory, with SQLite for the database and for the
Celery broker, and the filesystem for object storage.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class CreditPack(BaseModel):
    """A top-up users can buy: ``credits`` for ``amount`` in ``currency``'s minor unit (cents)."""

    id: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    name: str
    credits: int = Field(gt=0)
    amount: int = Field(gt=0)
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")

    @property
    def price_label(self) -> str:
        symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(self.currency)
        major = f"{self.amount / 100:.2f}"
        return f"{symbol}{major}" if symbol else f"{major} {self.currency.upper()}"


DEFAULT_PACKS = [
    CreditPack(id="starter", name="Starter", credits=1000, amount=1000),
    CreditPack(id="studio", name="Studio", credits=5500, amount=5000),
    CreditPack(id="pro", name="Pro", credits=12000, amount=10000),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GOUACHE_", env_file=".env", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    # How often a worker on the embedded (SQLite) broker looks for a new message: the
    # idle worker's pick-up delay, for a query per queue each time (kombu's default: 1 s).
    broker_poll_s: float = Field(default=0.05, gt=0, le=10)

    # Web. base_url: where people reach this server (https://studio.example.com), for the
    # links in emails; empty: the address each request came in on.
    base_url: str = ""
    session_days: int = Field(default=30, ge=1)

    # Storage
    storage: Literal["filesystem", "s3"] = "filesystem"
    storage_dir: Path | None = None
    s3_bucket: str = "gouache"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    # Credits and prices (see app/credits/pricing.py for the formula)
    signup_grant_credits: int = Field(default=200, ge=0)
    price_base_credits: float = Field(default=10.0, gt=0)
    price_ref_steps: int = Field(default=50, gt=0)
    price_ref_pixels: int = Field(default=512 * 512, gt=0)
    price_pixel_exponent: float = Field(default=1.2, gt=0)
    price_min_credits_per_image: int = Field(default=1, ge=1)

    # Free credits: granted at signup; optionally topped up to this amount once a
    # month (0 = off), without accumulating.
    monthly_refill_credits: int = Field(default=0, ge=0)

    # Buying credits. With no Stripe secret key, a local test checkout completes
    # purchases through the same fulfilment code (and is refused once keys are set).
    credit_packs: list[CreditPack] = Field(default_factory=lambda: list(DEFAULT_PACKS))
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""  # only to point the stripe library at a local test server
    stripe_webhook_tolerance_s: int = Field(default=300, ge=1)

    # The models users can pick: a TOML catalog file (app/generation/catalog.py,
    # docs/catalog.example.toml). Without one, the catalog is the one model below.
    model_catalog: Path | None = None
    # A worker serving several models keeps the pipelines it loaded, least recently used
    # evicted first, within this many MB of weights (0: no limit).
    worker_model_memory_mb: int = Field(default=0, ge=0)

    # The model when there is no catalog (a hub id, a local diffusers folder, or a built-in
    # model: builtin:demo, builtin:tiny-random). 0 or empty: that model's own default
    # (app/generation/catalog.py, from_settings).
    model: str = "builtin:demo"
    model_name: str = ""
    model_default_size: int = Field(default=0, ge=0)
    model_max_size: int = Field(default=0, ge=0)
    model_default_steps: int = Field(default=0, ge=0)
    model_max_steps: int = Field(default=100, ge=1)
    model_default_guidance: float = Field(default=0, ge=0, le=30)  # 0: 7.5 (the demo model: 5)
    # Width and height must be multiples of this (the VAE's downscale: 8 for Stable Diffusion).
    model_size_multiple: int = Field(default=8, ge=8)
    model_price_multiplier: float = Field(default=1.0, gt=0)
    max_images_per_job: int = Field(default=4, ge=1, le=9)
    max_prompt_chars: int = Field(default=1000, ge=1)
    # Image modes: uploads (checked before anything is charged) and upscale output
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(default=16 * 1024 * 1024, ge=64 * 64)
    max_upscale_side: int = Field(default=2048, ge=64)
    preview_every: int = Field(default=4, ge=0)  # a live preview every N steps (0: none)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"

    queue: str = "generate"
    # A running job holds a lease its worker renews every few seconds; the janitor requeues
    # a job whose lease expired (its worker died), up to job_max_attempts claims, then
    # fails it and releases its credits.
    job_lease_s: int = Field(default=30, ge=2)
    job_max_attempts: int = Field(default=3, ge=1)
    # A running job whose pipeline made no progress for this long is stuck: its worker
    # stops renewing the lease, so the job goes to another worker.
    job_stale_after_s: int = Field(default=600, ge=10)
    # A queued job no worker took for this long (no worker serves its model) is failed
    # and refunded.
    job_queue_timeout_s: int = Field(default=3600, ge=10)
    # Fair sharing: one user's jobs queued + running at once (0: no limit); one more is
    # refused (HTTP 429) and holds nothing.
    max_active_jobs_per_user: int = Field(default=4, ge=0)
    # Housekeeping by the janitor (`gouache janitor`, or the one `gouache dev` runs):
    # how often it sweeps, and how long a finished job's uploaded inputs are kept.
    janitor_interval_s: float = Field(default=5.0, gt=0)
    input_retention_s: int = Field(default=7 * 24 * 3600, ge=0)

    # ---- Abuse limits (issue 13): throttles, password-hashing work, test checkout, prompt blocklist ----
    # Failed logins, counted per account and per client address in a moving window; one more
    # is refused (HTTP 429 with Retry-After) before any password is checked, the right one
    # included. 0: no limit. Many people can share an address (an office, a phone network),
    # so the per-address limit is the looser one.
    login_failures_per_account: int = Field(default=5, ge=0)
    login_failures_per_ip: int = Field(default=20, ge=0)
    login_throttle_window_s: int = Field(default=15 * 60, ge=1)
    # Accounts made from one client address (0: no limit).
    signups_per_ip: int = Field(default=5, ge=0)
    signup_throttle_window_s: int = Field(default=3600, ge=1)
    # Where the throttles count: empty = the database (shared by every web process),
    # "memory://" (this process only), or "redis://host:port/db" (limits' Redis storage).
    rate_limit_storage_url: str = ""
    # Password hashing (argon2id: 64 MiB and ~0.15 s of CPU each): at most this many at
    # once per web process, and this many more waiting for a turn; beyond that a login or
    # sign-up is answered 503 at once instead of tying up a thread.
    password_hash_concurrency: int = Field(default=2, ge=1)
    password_hash_queue: int = Field(default=16, ge=0)
    # The local test checkout (purchases without money, when no Stripe key is set): only
    # where the operator asked for it. `gouache dev` turns it on.
    test_checkout: bool = False
    # Prompts refused by the content policy: words or phrases, matched case-insensitively
    # as whole words (comma-separated here, and/or one per line in the file).
    prompt_blocklist: str = ""
    prompt_blocklist_file: FilePath | None = None
    # Email and the account lifecycle (app/mail, app/accounts). Links in emails start with
    # base_url (above; empty: the address the request came in on). With no SMTP host (the
    # embedded default) each message is written to the outbox folder as an .eml file and
    # its link is logged, so a newcomer can click it.
    smtp_host: str = ""
    smtp_port: int = Field(default=0, ge=0, le=65535)  # 0: 465 for ssl, 587 for starttls, 25 for none
    smtp_tls: Literal["none", "starttls", "ssl"] = "starttls"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_timeout_s: float = Field(default=10.0, gt=0, le=120)
    mail_from: str = "Gouache <gouache@localhost>"
    outbox_dir: Path | None = None  # default: <data_dir>/outbox
    # How long the links in emails work (each works once).
    email_verify_hours: int = Field(default=48, ge=1)
    password_reset_minutes: int = Field(default=60, ge=5)
    # One account gets at most one confirmation or reset email this often (the rest are
    # answered as sent): the forms can't be used to flood someone's inbox.
    email_link_cooldown_s: int = Field(default=60, ge=0)
    # Operator (admin area, /metrics): with a token, /metrics wants `Authorization: Bearer
    # <token>`; without one, it answers only requests from this machine (loopback).
    metrics_token: str = ""
    # Hardening (app/security.py). The largest request body in bytes (a JSON or form
    # request, Stripe's webhook); a form with uploads (the generate form, the API's
    # multipart) may carry its image and mask, max_upload_bytes each, on top. A larger
    # body is refused with HTTP 413 before it is read.
    max_body_bytes: int = Field(default=1024 * 1024, ge=4096)
    # Strict-Transport-Security's max-age on responses over https (0: not sent).
    hsts_max_age_s: int = Field(default=365 * 24 * 3600, ge=0)

    # ---- Public API (issue 14): API keys and the OpenAI-compatible endpoints ----
    # Requests one API key may make per minute (moving window, counted in the throttles'
    # storage above: rate_limit_storage_url); one more is answered 429 with Retry-After. 0: no limit.
    api_key_requests_per_minute: int = Field(default=60, ge=0)
    # How long a /v1/images/... call waits for its job before giving up (the job is then
    # cancelled and nothing is charged). The wait holds no thread of the web process.
    openai_wait_s: float = Field(default=300, gt=0, le=3600)
    # How long the signed image links in /v1 answers ("url") work.
    openai_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # Signs short-lived links (app/signing.py). Empty: a random one is made on first use and
    # kept in <data_dir>/secret_key, so every web process of one deployment shares it; set it
    # when the web processes do not share a data directory.
    secret_key: str = ""

    # Native API (issue 14): a job's event stream (GET /api/v1/generations/{id}/events)
    # reads the job this often, sends a keep-alive comment after this long without an
    # event, and ends after this long (EventSource reconnects where it left off).
    api_events_poll_s: float = Field(default=0.25, gt=0, le=10)
    api_events_keepalive_s: float = Field(default=15.0, gt=0)
    api_events_max_s: float = Field(default=600.0, gt=0)

    # ---- Throughput (issue 16): batching compatible jobs, the GPU path (workers/) ----
    # A worker runs queued jobs that share model, mode, size, steps, sampler and guidance
    # as one pipeline call, up to this many images in all (1: one job per call), gathered
    # for at most this long after the first (a lone job waits no longer than that).
    batch_max_images: int = Field(default=8, ge=1, le=64)
    batch_window_ms: int = Field(default=50, ge=0, le=5000)
    # Weights' precision: auto is float16 on CUDA and float32 elsewhere.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # torch.compile the UNet, compiled and warmed at the default size before the worker
    # reports ready (minutes at start; faster steps after).
    compile: bool = False
    # Decode images of more than this² pixels in VAE tiles (0: never).
    vae_tiling_above: int = Field(default=1536, ge=0)
    # A replacement VAE for the model without a catalog (GOUACHE_MODEL), e.g. the fp16-safe
    # SDXL one "madebyollin/sdxl-vae-fp16-fix"; a catalog entry names its own ("vae").
    model_vae: str = ""

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        self.data_dir = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'gouache.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir / "objects"
        if self.outbox_dir is None:
            self.outbox_dir = self.data_dir / "outbox"
        return self

    @property
    def stripe_enabled(self) -> bool:
        return bool(self.stripe_secret_key)

    def pack(self, pack_id: str) -> CreditPack | None:
        return next((p for p in self.credit_packs if p.id == pack_id), None)

    @property
    def builtin_model_dir(self) -> Path:
        return self.data_dir / "models" / "tiny-random"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
