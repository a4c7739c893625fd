"""The `gouache` command: dev, web, worker, db."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import typer

from app.config import get_settings

cli = typer.Typer(help="Gouache: a self-hostable image-generation studio.", no_args_is_help=True)
db_cli = typer.Typer(help="Database migrations.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


def _worker_argv(queues: str | None, loglevel: str) -> list[str]:
    settings = get_settings()
    return [
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--queues",
        queues or settings.queue,
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
    queues: str = typer.Option(None, help="Comma-separated queues to consume (default: the configured queue)."),
    loglevel: str = "INFO",
) -> None:
    """Run one generation worker (one job at a time, model kept loaded)."""
    from workers.celery_app import app as celery_app

    celery_app.worker_main(argv=_worker_argv(queues, loglevel))


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
    cli()


if __name__ == "__main__":
    main()
