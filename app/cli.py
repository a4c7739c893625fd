"""The `gouache` command: dev, web, worker, db, credits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import typer

from app.config import get_settings
from app.generation.catalog import CatalogError, from_settings, get_catalog

cli = typer.Typer(help="Gouache: a self-hostable image-generation studio.", no_args_is_help=True)
db_cli = typer.Typer(help="Database migrations.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
credits_cli = typer.Typer(help="Credits: grant them, look up a balance, audit the ledger.", no_args_is_help=True)
cli.add_typer(credits_cli, name="credits")


def _model_queues(models: str | None) -> str:
    """The queues of the catalog models named in ``models`` (comma-separated ids; all
    of them when empty); exit 2 naming an unknown id."""
    settings = get_settings()
    catalog = get_catalog(settings)
    ids = [m.strip() for m in (models or "").split(",") if m.strip()] or catalog.ids
    unknown = [i for i in ids if i not in catalog.ids]
    if unknown:
        typer.secho(
            f"Unknown model(s) {', '.join(unknown)}; the catalog has: {', '.join(catalog.ids)}.", fg="red", err=True
        )
        raise typer.Exit(2)
    return ",".join(catalog.get(i).queue(settings.queue) for i in dict.fromkeys(ids))


def _worker_argv(queues: str | None, loglevel: str, models: str | None = None) -> list[str]:
    return [
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--queues",
        queues or _model_queues(models),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


@db_cli.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from app import migrate

    migrate.upgrade(get_settings(), revision)
    typer.echo("Database is up to date.")


def _migrated_settings():
    """The settings, after checking the database is migrated (exit 1 if not)."""
    from app import migrate

    settings = get_settings()
    try:
        migrate.check_current(settings)
    except migrate.NotMigrated as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from None
    return settings


def _user_id(session, email: str) -> int:
    from sqlalchemy import select

    from app.accounts.models import User

    user_id = session.scalar(select(User.id).where(User.email == email.strip().lower()))
    if user_id is None:
        typer.secho(f"No account with the email {email.strip()!r}.", fg="red", err=True)
        raise typer.Exit(1)
    return user_id


@credits_cli.command("grant")
def credits_grant(
    email: str = typer.Argument(..., metavar="EMAIL", help="The account's email address."),
    amount: int = typer.Argument(..., metavar="N", help="How many credits to give (at least 1)."),
    reason: str = typer.Option(..., "--reason", help="Why, for the ledger (shown in the user's history)."),
) -> None:
    """Give an account N free credits, recorded in the ledger with the reason."""
    from app.credits import ledger
    from app.db import transaction

    if amount <= 0:
        typer.secho(f"N must be a positive number of credits (got {amount}).", fg="red", err=True)
        raise typer.Exit(1)
    reason = " ".join(reason.split())
    if not reason:
        typer.secho("Give a reason with --reason.", fg="red", err=True)
        raise typer.Exit(1)
    settings = _migrated_settings()
    with transaction(settings) as session:
        user_id = _user_id(session, email)
        ledger.grant(
            session,
            user_id,
            amount,
            key=f"admin:{uuid.uuid4()}",
            memo=f"Granted by an operator: {reason}",
            reference=f"admin:{reason}"[:255],
        )
        balance = ledger.balance(session, user_id)
    typer.echo(f"Granted {amount} credits to {email.strip().lower()}; the balance is now {balance}.")


@credits_cli.command("balance")
def credits_balance(email: str = typer.Argument(..., metavar="EMAIL", help="The account's email address.")) -> None:
    """Print an account's credit balance."""
    from app.credits import ledger
    from app.db import transaction

    with transaction(_migrated_settings()) as session:
        typer.echo(ledger.balance(session, _user_id(session, email)))


@credits_cli.command("audit")
def credits_audit() -> None:
    """Recompute every balance from the ledger; exit 1 if any cached balance differs."""
    from sqlalchemy import func, select

    from app.accounts.models import User
    from app.credits import ledger
    from app.db import transaction

    with transaction(_migrated_settings()) as session:
        accounts = session.scalar(select(func.count()).select_from(User))
        mismatches = ledger.audit(session)
    if not mismatches:
        typer.echo(f"OK: {accounts} accounts, all balances match the ledger")
        return
    for m in mismatches:
        negative = " (negative)" if m.cached < 0 else ""
        typer.echo(f"MISMATCH {m.email} (user {m.user_id}): cached balance {m.cached}{negative}, ledger sum {m.summed}")
    typer.secho(f"{len(mismatches)} of {accounts} accounts do not match the ledger.", fg="red", err=True)
    raise typer.Exit(1)


@cli.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    out: str = typer.Option(
        "gouache.png", "--out", "-o", help="Where to write the PNG (several images: -1, -2 ... suffixes)."
    ),
    model: str = typer.Option(
        None, help="A catalog model id, a hub id or a local diffusers folder (default: the catalog's first model)."
    ),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
    steps: int = typer.Option(None, min=1, max=500, help="Sampling steps (default: the model's)."),
    width: int = typer.Option(None, min=64, max=4096, help="Width in pixels (the model's size multiple)."),
    height: int = typer.Option(None, min=64, max=4096, help="Height in pixels (the model's size multiple)."),
    guidance: float = typer.Option(None, min=0, max=30, help="Guidance scale (default: the model's)."),
    sampler: str = typer.Option("euler", help="euler, euler_a, dpmpp_2m_karras, ddim or unipc."),
    seed: int = typer.Option(None, min=0, max=2**32 - 1, help="Random when omitted; printed either way."),
    n: int = typer.Option(1, "--n", min=1, max=9, help="How many images."),
) -> None:
    """Generate images from the command line, without the web app or a worker."""
    import secrets
    import time
    from pathlib import Path

    from app.enums import SAMPLERS
    from app.errors import UserError
    from app.generation import metadata
    from app.generation.schemas import parse_sampler
    from workers import pipelines

    settings = get_settings()
    catalog = get_catalog(settings)
    # A catalog id, or any model reference with that model's own defaults.
    spec = (catalog.find(model) if model else catalog.default) or from_settings(
        settings.model_copy(update={"model": model, "model_name": ""})
    ).default
    ref = spec.source
    width = width or spec.default_size
    height = height or spec.default_size
    if guidance is None:
        guidance = spec.default_guidance
    steps = steps or spec.default_steps
    try:
        sampler = parse_sampler(sampler)
    except UserError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2) from None
    seed = secrets.randbelow(2**32) if seed is None else seed
    started = time.perf_counter()
    pipe = pipelines.load(settings, ref)
    loaded = time.perf_counter()
    multiple = pipelines.size_multiple(pipe)
    if width % multiple or height % multiple:
        typer.secho(f"Width and height must be multiples of {multiple} for this model.", fg="red", err=True)
        raise typer.Exit(2)
    images = pipelines.sample(
        pipe,
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=seed,
        n_images=n,
        sampler=sampler,
    )
    target = Path(out)
    for i, (image, image_seed) in enumerate(images):
        path = target if n == 1 else target.with_name(f"{target.stem}-{i + 1}{target.suffix or '.png'}")
        params = metadata.Parameters(
            prompt=prompt,
            negative_prompt=negative,
            steps=steps,
            sampler=SAMPLERS[sampler],
            guidance=guidance,
            seed=image_seed,
            width=image.width,
            height=image.height,
            model=spec.name if spec else model,
        )
        path.write_bytes(metadata.png_bytes(image, params))
        typer.echo(f"{path}  seed {image_seed}  {image.width}×{image.height}")
    typer.echo(f"loaded in {loaded - started:.1f} s, sampled in {time.perf_counter() - loaded:.1f} s")


@cli.command("train-demo")
def train_demo(
    out: str = typer.Option("var/train-demo", help="Working folder: checkpoints/ and the finished model/."),
    seed: int = typer.Option(0, help="Everything (data, initial weights, noise) follows from this seed."),
    size: int = typer.Option(256, help="Native image size (a multiple of 64)."),
    vae_steps: int = typer.Option(1500, min=1),
    unet_steps: int = typer.Option(3000, min=1),
    n_scenes: int = typer.Option(6000, min=1, help="Training scenes for the UNet (latents computed once)."),
    unet_batch: int = typer.Option(32, min=1),
    vae_batch: int = typer.Option(16, min=1),
    unet_lr: float = typer.Option(6e-4, min=0, help="Peak learning rate (cosine decay to 10%)."),
    warmup_steps: int = typer.Option(0, min=0, help="Linear learning-rate warm-up steps."),
    unet_channels: str = typer.Option("32,64,128,128", help="UNet channels per level, comma-separated."),
    attention_levels: int = typer.Option(2, min=1, help="Cross-attention in the coarsest N levels."),
    device: str = typer.Option("auto", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N."),
    init_from: str = typer.Option("", help="Continue from an exported model folder: reuse its VAE and text encoder."),
    continue_unet: bool = typer.Option(False, help="With --init-from: start from its UNet weights too."),
    time_budget: float = typer.Option(0, min=0, help="Seconds the UNet stage may take (0: unlimited)."),
    checkpoint_every: int = typer.Option(100, min=1),
) -> None:
    """Train the demo model on drawn scenes; run it again to resume after an interruption."""
    import logging
    from pathlib import Path

    from workers.demo.train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if size % 64:
        typer.secho("--size must be a multiple of 64.", fg="red", err=True)
        raise typer.Exit(2)
    if continue_unet and not init_from:
        typer.secho("--continue-unet needs --init-from.", fg="red", err=True)
        raise typer.Exit(2)
    if init_from and not (Path(init_from) / "model_index.json").is_file():
        typer.secho(f"--init-from {init_from}: not an exported model folder (no model_index.json).", fg="red", err=True)
        raise typer.Exit(2)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            typer.secho(f"--device {device}: no CUDA GPU is visible here (try --device auto).", fg="red", err=True)
            raise typer.Exit(2)
    try:
        channels = tuple(int(c) for c in unet_channels.split(","))
    except ValueError:
        typer.secho("--unet-channels takes integers such as 32,64,128,128.", fg="red", err=True)
        raise typer.Exit(2) from None
    cfg = TrainConfig(
        out=Path(out),
        seed=seed,
        size=size,
        vae_steps=vae_steps,
        unet_steps=unet_steps,
        n_scenes=n_scenes,
        unet_batch=unet_batch,
        vae_batch=vae_batch,
        vae_crop=min(64, size),
        unet_lr=unet_lr,
        warmup_steps=warmup_steps,
        unet_channels=channels,
        attention_levels=attention_levels,
        device=device,
        init_from=Path(init_from) if init_from else None,
        init_unet=continue_unet,
        time_budget_s=time_budget,
        checkpoint_every=checkpoint_every,
    )
    path = train(cfg)
    typer.echo(f"Model written to {path}. Use it with GOUACHE_MODEL={path.resolve()}")


@cli.command()
def web(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the web app (no worker)."""
    import uvicorn

    from app import migrate

    try:
        migrate.check_current(get_settings())
    except migrate.NotMigrated as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from None

    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, proxy_headers=True)


@cli.command()
def worker(
    models: str = typer.Option(
        None, help="Comma-separated catalog model ids to serve (default: every model in the catalog)."
    ),
    queues: str = typer.Option(None, help="Comma-separated Celery queues to consume instead of --models' queues."),
    loglevel: str = "INFO",
) -> None:
    """Run one generation worker (one job at a time; the models it served kept loaded
    within GOUACHE_WORKER_MODEL_MEMORY_MB)."""
    from app.queue import ensure_data_dir
    from workers.celery_app import app as celery_app

    ensure_data_dir(get_settings())
    celery_app.worker_main(argv=_worker_argv(queues, loglevel, models))


@cli.command()
def dev(host: str = "127.0.0.1", port: int = typer.Option(8000, help="Port for the web app.")) -> None:
    """Migrate, then run the web app and one worker together (the embedded default)."""
    import uvicorn

    from app import migrate

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings)
    worker_proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", *_worker_argv(None, "INFO")],
        env=os.environ.copy(),
    )
    typer.secho(
        f"\n  Gouache is running at http://{host}:{port}/  (data in {settings.data_dir})\n", fg="green", bold=True
    )
    try:
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port)
    finally:
        worker_proc.send_signal(signal.SIGTERM)
        try:
            worker_proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker_proc.kill()


def main() -> None:
    from pydantic import ValidationError

    try:
        get_catalog(get_settings())  # a bad setting or catalog file: its message, not a traceback
    except ValidationError as e:
        for error in e.errors():
            where = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            typer.secho(f"Invalid settings{' (' + where + ')' if where else ''}: {message}", fg="red", err=True)
        raise SystemExit(2) from None
    except CatalogError as e:
        typer.secho(f"Invalid settings: {e}", fg="red", err=True)
        raise SystemExit(2) from None
    cli()


if __name__ == "__main__":
    main()
