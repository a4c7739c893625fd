"""A running site with something on every page, and the list of its pages: what
tests/browser/test_layout.py walks at both sizes and what scripts/screenshots photographs.

No worker and no model run: the gallery's images are made as tests/gallery_data.py makes them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from app.accounts import service as accounts
from app.accounts.models import User
from app.db import transaction, utcnow
from app.gallery import collections
from tests.browser.conftest import sign_up_in_browser, web_server
from tests.gallery_data import add_image, user_id
from tests.support import PASSWORD, make_settings, migrated

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}

T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
IMAGES = [  # prompt, size, colour — oldest first
    ("a red circle on a blue background", (64, 64), (37, 99, 235)),
    ("three pink squares on a purple background", (64, 96), (147, 51, 234)),
    ("a lighthouse on a cliff at sunset, gouache", (96, 64), (234, 88, 12)),
    ("two yellow stars on a black background", (64, 64), (24, 24, 27)),
    ("a green triangle on a white background", (64, 64), (22, 163, 74)),
    ("an orange square in the top left corner", (64, 64), (234, 179, 8)),
    ("a large blue circle in the centre", (64, 64), (29, 78, 216)),
    ("four small red circles on a green background", (64, 64), (21, 128, 61)),
]

OWNER = "ada@example.com"  # signed up in the browser: confirmed, with the welcome credits
NEWCOMER = "bea@example.com"  # confirmed, nothing made yet: the empty states


@dataclass
class Site:
    url: str
    settings: object
    images: list[str] = field(default_factory=list)
    collection: str = ""

    def logged_out_pages(self) -> dict[str, str]:
        return {
            "landing": "/",
            "signup": "/signup",
            "login": "/login",
            "login-next": "/login?next=%2Fbilling",
            "pricing": "/pricing",
            "forgot": "/password/forgot",
            "signup-sent": "/signup/sent",
            "404": "/nonexistent",
            "404-docs": "/docs",
        }

    def logged_in_pages(self) -> dict[str, str]:
        return {
            "generate": "/",
            "gallery": "/gallery",
            "gallery-filtered": "/gallery?q=circle",
            "gallery-collection": f"/gallery?collection={self.collection}",
            "detail": f"/gallery/{self.images[-1]}",
            "collections": "/collections",
            "billing": "/billing",
            "pricing": "/pricing",
            "account": "/account",
            "keys": "/account/api-keys",
            "account-delete": "/account/delete",
            "admin": "/admin",
            "admin-users": "/admin/users",
            "404": "/nonexistent",
            "405": "/logout",
        }


def confirmed_user(settings, email: str) -> None:
    """An account with a confirmed address, made without the browser (no credits)."""
    with transaction(settings) as session:
        user = accounts.sign_up(session, email, PASSWORD)
        user.email_verified_at = utcnow()


def make_admin(settings, email: str) -> None:
    with transaction(settings) as session:
        session.execute(update(User).where(User.email == email).values(is_admin=True))


def log_in(page, url: str, email: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda u: "/login" not in u)


def fill_gallery(site: Site, email: str = OWNER) -> None:
    """The owner's images, and a collection of the circles."""
    settings = site.settings
    owner = user_id(settings, email)
    model = getattr(settings, "model", "models/alpha")
    for i, (prompt, size, colour) in enumerate(IMAGES):
        site.images.append(
            add_image(
                settings, owner, prompt, size=size, colour=colour, model=model, created_at=T0 + timedelta(hours=i)
            )
        )
    with transaction(settings) as session:
        made = collections.create_collection(session, owner, "Circles")
        circles = [image for image, (prompt, _s, _c) in zip(site.images, IMAGES, strict=True) if "circle" in prompt]
        collections.add_to_collection(session, owner, made.id, circles)
        site.collection = made.id


@contextmanager
def tour_site(tmp: Path) -> Iterator[Site]:
    """A fresh install's settings (the demo model, test checkout) on a temporary data dir,
    with a newcomer already confirmed; the owner signs up in the browser (``sign_up_owner``)."""
    settings = migrated(make_settings(tmp / "data", test_checkout=True))
    confirmed_user(settings, NEWCOMER)
    with web_server(settings, tmp / "web.log") as url:
        yield Site(url, settings)


def sign_up_owner(page, site: Site) -> None:
    sign_up_in_browser(page, site.url, OWNER)
    with transaction(site.settings) as session:
        assert session.scalar(select(User.email_verified_at).where(User.email == OWNER)) is not None
