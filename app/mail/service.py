"""Compose and send the emails the accounts send (links to confirm an address or reset a password).

With ``GOUACHE_SMTP_HOST`` set, messages go through that server (``smtp_tls``: ``ssl`` from the
first byte, ``starttls`` after the greeting, or ``none``); without one, each is written to the
outbox folder (``<data_dir>/outbox/``) as an ``.eml`` file and its path and link are logged, so
whoever runs ``gouache dev`` can click it. :func:`send` never raises: a mail server that is down
costs nobody their account (the failure is logged; the user can ask for the link again). Routes
call it as a background task, after the response and off the event loop.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import tempfile
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.config import REPO_ROOT, Settings
from app.db import utcnow

log = logging.getLogger("gouache.mail")

_DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}

# Plain-text templates: the first line is "Subject: ...", then a blank line, then the body.
_templates = Environment(
    loader=FileSystemLoader(str(REPO_ROOT / "templates" / "email")),
    autoescape=False,  # text/plain, never shown as HTML
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def compose(settings: Settings, to: str, template: str, **context: object) -> EmailMessage:
    """The message ``templates/email/<template>.txt`` renders to, addressed to ``to``."""
    text = _templates.get_template(f"{template}.txt").render(settings=settings, to=to, **context)
    head, _, body = text.partition("\n\n")
    if not head.startswith("Subject:"):
        raise ValueError(f"email template {template!r} must start with a Subject: line")
    message = EmailMessage()
    message["Subject"] = head.removeprefix("Subject:").strip()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=_domain(settings.mail_from))
    message.set_content(body)
    return message


def send(settings: Settings, message: EmailMessage, *, link: str = "") -> bool:
    """Deliver ``message``; whether it went. ``link`` is the one the message carries, logged
    in outbox mode. Never raises."""
    to, subject = message["To"], message["Subject"]
    try:
        if settings.smtp_host:
            _send_smtp(settings, message)
            log.info("email %r sent to %s", subject, to)
        else:
            path = _write_outbox(settings, message)
            # a warning, so it shows without any logging set up: this is how a newcomer gets the link
            shown = f"; link: {link}" if link else ""
            log.warning("no SMTP host set: email %r to %s written to %s%s", subject, to, path, shown)
        return True
    except Exception:
        log.exception("could not send email %r to %s (the user can ask for it again)", subject, to)
        return False


def _send_smtp(settings: Settings, message: EmailMessage) -> None:
    port = settings.smtp_port or _DEFAULT_PORTS[settings.smtp_tls]
    timeout = settings.smtp_timeout_s
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if settings.smtp_tls == "ssl":
        smtp = smtplib.SMTP_SSL(settings.smtp_host, port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(settings.smtp_host, port, timeout=timeout)
    with smtp:
        if settings.smtp_tls == "starttls":
            smtp.starttls(context=context)
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        smtp.send_message(message)


def outbox(settings: Settings) -> Path:
    assert settings.outbox_dir is not None  # set by Settings' validator
    return settings.outbox_dir


def _write_outbox(settings: Settings, message: EmailMessage) -> Path:
    folder = outbox(settings)
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", str(message["Subject"]).lower()).strip("-")[:48] or "message"
    stamp = utcnow().strftime("%Y%m%dT%H%M%S.%f")
    # written whole, then renamed: a reader never sees half a message
    with tempfile.NamedTemporaryFile("wb", dir=folder, prefix=".tmp-", delete=False) as f:
        f.write(message.as_bytes())
    path = folder / f"{stamp}-{slug}.eml"
    Path(f.name).replace(path)
    return path


def _domain(address: str) -> str:
    found = re.search(r"@([A-Za-z0-9.-]+)", address)
    return found.group(1) if found else "localhost"
