"""The web side of the `gouache` command: web, dev, janitor, db, credits, users, keys.

The worker side (worker, generate, train-demo) lives in ``workers/cli.py``, which adds
these commands to its own and is what the ``gouache`` script runs: app/ never imports
workers/, so a web-only install (no torch) has every command here.
"""

from __future__ import annotations

import os
import re
import sys
import uuid

import typer

from app.config import Settings, get_settings
from app.generation.catalog import CatalogError, get_catalog

HELP = "Gouache: a self-hostable image-generation studio."
cli = typer.Typer(help=HELP, no_args_is_help=True)
db_cli = typer.Typer(help="Database migrations.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
credits_cli = typer.Typer(help="Credits: grant them, look up a balance, audit the ledger.", no_args_is_help=True)
cli.add_typer(credits_cli, name="credits")
users_cli = typer.Typer(help="Accounts: make or revoke admins.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")
keys_cli = typer.Typer(help="API keys: make one for an account, list them, revoke one.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")


def model_queues(models: str | None) -> str:
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


def worker_argv(queues: str | None, loglevel: str, models: str | None = None) -> list[str]:
    """The arguments of ``celery worker`` for one Gouache worker (``gouache worker``, and
    the worker ``gouache dev`` starts as a subprocess)."""
    return [
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--queues",
        queues or model_queues(models),
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


def _set_admin(email: str, is_admin: bool) -> None:
    from app.admin import service as admin
    from app.errors import NotFound

    settings = _migrated_settings()
    try:
        changed = admin.set_admin(settings, email, is_admin, admin.CLI)
    except NotFound as e:
        typer.secho(e.message, fg="red", err=True)
        raise typer.Exit(1) from None
    email = email.strip().lower()
    if is_admin:
        typer.echo(f"{email} is now an admin: /admin is theirs." if changed else f"{email} is already an admin.")
    else:
        typer.echo(f"{email} is no longer an admin." if changed else f"{email} was not an admin.")


@users_cli.command("make-admin")
def users_make_admin(email: str = typer.Argument(..., metavar="EMAIL", help="The account's email address.")) -> None:
    """Make an account an admin (the admin area at /admin), recorded in the audit log."""
    _set_admin(email, True)


@users_cli.command("revoke-admin")
def users_revoke_admin(email: str = typer.Argument(..., metavar="EMAIL", help="The account's email address.")) -> None:
    """Take an account's admin rights away, recorded in the audit log."""
    _set_admin(email, False)


@keys_cli.command("create")
def keys_create(
    email: str = typer.Argument(..., metavar="EMAIL", help="The account's email address."),
    name: str = typer.Option(..., "--name", help="What the key is for (shown in the account's list)."),
) -> None:
    """Make an API key for an account and print it, alone, on standard output (it is not
    stored, only its hash: this is the one time it is shown)."""
    from app.apikeys import service as apikeys
    from app.db import transaction
    from app.errors import UserError

    settings = _migrated_settings()
    try:
        with transaction(settings) as session:
            row, key = apikeys.create(session, _user_id(session, email), name)
            prefix = row.prefix
    except UserError as e:
        typer.secho(e.message, fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(key)
    typer.secho(f"Made key {prefix} for {email.strip().lower()}; it is not shown again.", err=True)


@keys_cli.command("list")
def keys_list(
    email: str = typer.Argument(..., metavar="EMAIL", help="The account's email address."),
    revoked: bool = typer.Option(False, "--revoked", help="Show revoked keys too."),
) -> None:
    """An account's API keys: prefix, created, last used, name (and when revoked)."""
    from app.apikeys import service as apikeys
    from app.db import reading

    def when(moment) -> str:
        return moment.strftime("%Y-%m-%d %H:%M") if moment else "never"

    settings = _migrated_settings()
    with reading(settings) as session:
        for k in apikeys.list_keys(session, _user_id(session, email), revoked=revoked):
            gone = f"  revoked {when(k.revoked_at)}" if k.revoked_at else ""
            typer.echo(f"{k.prefix}  created {when(k.created_at)}  last used {when(k.last_used_at)}  {k.name}{gone}")


@keys_cli.command("revoke")
def keys_revoke(prefix: str = typer.Argument(..., metavar="PREFIX", help="The key prefix (gch_…).")) -> None:
    """Revoke an API key: it stops working at once."""
    from app.apikeys import service as apikeys
    from app.db import transaction
    from app.errors import NotFound

    settings = _migrated_settings()
    try:
        with transaction(settings) as session:
            row = apikeys.revoke_prefix(session, prefix)
            typer.echo(f"Revoked {row.prefix} ({row.name}).")
    except NotFound as e:
        typer.secho(e.message, fg="red", err=True)
        raise typer.Exit(1) from None


def _share_http_metrics(data_dir) -> None:
    """Several web processes answer /metrics in turn: prometheus-client's multiprocess
    mode makes each one's HTTP latency part of every answer. Its folder must be empty when
    the processes start (an operator's own PROMETHEUS_MULTIPROC_DIR is left as it is)."""
    import os
    import shutil

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    folder = data_dir / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # the uvicorn workers inherit it


@cli.command()
def web(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = typer.Option(1, min=1, help="Web processes (uvicorn workers) sharing the port."),
) -> None:
    """Serve the web app (no worker). Behind a TLS proxy: X-Forwarded-* headers are
    trusted from the addresses in FORWARDED_ALLOW_IPS (default 127.0.0.1)."""
    import uvicorn

    from app import migrate

    try:
        migrate.check_current(get_settings())
    except migrate.NotMigrated as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(1) from None
    if workers > 1:
        _share_http_metrics(get_settings().data_dir)

    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, proxy_headers=True, workers=workers)


def _local_url(host: str, port: int) -> str:
    """Where this machine reaches a server listening on ``host``."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _dev_log(message: str) -> None:
    typer.secho(f"gouache dev: {message}", fg="cyan", err=True)


def dev_web_env(settings: Settings) -> dict[str, str]:
    """The environment of the web process `gouache dev` starts: the local test checkout is
    on (a development server sells test credits) unless GOUACHE_TEST_CHECKOUT says otherwise."""
    env = dict(os.environ)
    if "test_checkout" not in settings.model_fields_set:
        env["GOUACHE_TEST_CHECKOUT"] = "true"
    return env


def _hide_password(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def where_things_are(settings: Settings) -> str:
    """One line: the data folder, and the database, broker and image storage `gouache dev`
    uses (what lies in the data folder named relative to it; passwords hidden)."""
    data = settings.data_dir

    def place(url: str, *, scheme: str, label: str) -> str:
        inside = f"{scheme}:///{data}/"
        return f"{label} {url.removeprefix(inside)}" if url.startswith(inside) else _hide_password(url)

    database = place(settings.database_url, scheme="sqlite", label="SQLite")
    broker = place(settings.broker_url, scheme="sqla+sqlite", label="SQLite")
    if settings.storage == "s3":
        endpoint = f" at {settings.s3_endpoint_url}" if settings.s3_endpoint_url else ""
        storage = f"S3 bucket {settings.s3_bucket}{endpoint}"
    else:
        folder = settings.storage_dir or data / "objects"
        storage = f"{folder.relative_to(data)}/" if folder.is_relative_to(data) else str(folder)
    return f"data in {data}: database {database}, broker {broker}, images {storage}"


@cli.command()
def dev(
    host: str = "127.0.0.1",
    port: int = typer.Option(8000, help="Port for the web app."),
    verbose: bool = typer.Option(False, "--verbose", help="Also show every request and Celery's banner."),
) -> None:
    """Migrate, then run the web app, one worker and the janitor together (the embedded
    default), restarting the worker if it exits; Ctrl-C or SIGTERM stops everything."""
    from app import migrate
    from app.generation import janitor as job_janitor
    from app.ops.supervisor import Supervisor, http_ok

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings)
    _dev_log(where_things_are(settings))

    supervisor = Supervisor(log=_dev_log)
    url = f"{_local_url(host, port)}/"
    # Quiet unless --verbose: uvicorn's warnings and errors (not its start-up lines nor a
    # line per request, the supervisor's probes included), and no Celery banner.
    web_argv = ["-m", "uvicorn", "app.main:create_app", "--factory", "--host", host, "--port", str(port)]
    web_argv += [] if verbose else ["--log-level", "warning"]
    supervisor.process(
        "web",
        [sys.executable, *web_argv, "--timeout-graceful-shutdown", "5"],
        env=dev_web_env(settings),
        ready=http_ok(f"{_local_url(host, port)}/healthz"),
        about=f"on {url}",
    )
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app", *([] if verbose else ["--quiet"])]
    queues, ids = model_queues(None), get_catalog(settings).ids
    serves = f"for model{'s' * (len(ids) > 1)} {', '.join(ids)} (queue{'s' * (len(ids) > 1)} {queues})"
    supervisor.process("worker", [*celery, *worker_argv(queues, "INFO")], ready_file=True, about=serves)
    supervisor.thread("janitor", lambda stop: job_janitor.run(settings, stop))

    def announce() -> None:
        typer.secho(f"\n  Gouache is running at {url}  (data in {settings.data_dir})\n", fg="green", bold=True)

    raise typer.Exit(supervisor.run(on_ready=announce))


@cli.command()
def janitor(
    interval: float = typer.Option(None, help="Seconds between sweeps (default: GOUACHE_JANITOR_INTERVAL_S)."),
    once: bool = typer.Option(False, "--once", help="Sweep once, print what was done, and exit."),
) -> None:
    """Recover jobs whose worker died or whose message never went out, time out queued jobs,
    and clean up (previews, old inputs, expired sessions, delivered broker messages), until
    SIGTERM or Ctrl-C. Run one per deployment next to the workers (`gouache dev` runs its own)."""
    import logging
    import signal
    import threading

    from app.generation import janitor as job_janitor

    settings = _migrated_settings()
    if once:
        typer.echo(f"Janitor: {job_janitor.sweep(settings)}.")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("janitor: %s received; stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    job_janitor.run(settings, stop, interval)


def run(typer_app: typer.Typer) -> None:
    """Run ``typer_app`` after checking the settings and the catalog: a bad setting or
    catalog file exits 2 with its message, not a traceback."""
    from pydantic import ValidationError

    try:
        get_catalog(get_settings())
    except ValidationError as e:
        for error in e.errors():
            where = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            typer.secho(f"Invalid settings{' (' + where + ')' if where else ''}: {message}", fg="red", err=True)
        raise SystemExit(2) from None
    except CatalogError as e:
        typer.secho(f"Invalid settings: {e}", fg="red", err=True)
        raise SystemExit(2) from None
    typer_app()


def main() -> None:
    """The web-side commands alone (``python -m app.cli``); ``gouache`` is ``workers.cli:main``."""
    run(cli)


if __name__ == "__main__":
    main()
