"""The Create page in Chromium at a desktop's and a phone's size (issue 15): the new job in
view at once and filling in, the quote agreeing with typed parameters, the warning about
words the model has never seen, uploads by drop and paste with a preview, the price at once
for an outpaint opened from a result, no console errors, and only one's own recent prompts."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, sign_up_in_browser, web_server
from tests.support import Worker, make_settings, migrated

pytestmark = pytest.mark.browser

VIEWPORTS = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
PLACEHOLDER = "a blue star in the top left"


@pytest.fixture(scope="module")
def shapes_server(tmp_path_factory, tiny_model):
    """The web app and a worker, with a catalog whose (tiny) model declares its vocabulary."""
    tmp = tmp_path_factory.mktemp("generate-ux")
    catalog = tmp / "catalog.toml"
    catalog.write_text(
        f"""
[[models]]
id = "shapes"
name = "Shapes test model"
source = "{tiny_model}"
family = "test"
default_size = 64
max_size = 128
default_steps = 4
licence = {{ name = "AGPL-3.0", commercial_use = true }}
placeholder = "{PLACEHOLDER}"
examples = ["a red circle on a blue background", "two yellow stars"]
vocabulary = ["a", "one", "two", "circle", "square", "star", "red", "blue", "yellow", "green",
              "on", "background", "top", "left"]
""",
        encoding="utf-8",
    )
    settings = migrated(
        make_settings(tmp / "data", tiny_model, test_checkout=True, model_catalog=catalog, signups_per_ip=100)
    )
    worker = Worker(settings, tmp / "worker.log")
    with web_server(settings, tmp / "web.log") as url:
        worker.wait_ready()
        yield url
        worker.stop()


REPORT_CSP_VIOLATIONS = """document.addEventListener('securitypolicyviolation', (e) => {
    console.error('CSP violation: ' + e.violatedDirective + ' by ' + (e.target && e.target.outerHTML || e.target));
});"""


def expected(message) -> bool:
    """A 404 not of this page's making: the favicon (its own change), and a live preview
    asked for just as its job finished (the preview is gone once the job is over)."""
    url = message.location.get("url", "")
    return message.text.startswith("Failed to load resource") and (
        url.endswith("/favicon.ico") or re.search(r"/generations/[\w-]+/preview\?step=\d+$", url) is not None
    )


@pytest.fixture(params=list(VIEWPORTS))
def screen(request, browser):
    """(page, viewport name, console errors): a fresh browser context at that size."""
    context = browser.new_context(viewport=VIEWPORTS[request.param])
    page = context.new_page()
    page.add_init_script(REPORT_CSP_VIOLATIONS)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not expected(m) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page, request.param, errors
    context.close()


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"generate-ux-{name}.png"), full_page=False)


def in_viewport(page, selector: str) -> None:
    """Waits until the element's top edge is on screen (below the sticky header) and its first 300 px show."""
    page.wait_for_function(
        """(sel) => {
            const el = document.querySelector(sel);
            if (!el) return false;
            const r = el.getBoundingClientRect();
            const header = document.querySelector('.topbar');
            const top = header ? header.getBoundingClientRect().bottom : 0;
            return r.top >= top - 1 && Math.min(r.bottom, r.top + 300) <= window.innerHeight;
        }""",
        arg=selector,
        timeout=10_000,
    )


def test_the_new_job_is_in_view_at_once_and_fills_in(shapes_server, screen):
    page, size, errors = screen
    quote_urls: list[str] = []
    page.on("request", lambda r: quote_urls.append(r.url) if "/generate/quote" in r.url else None)
    sign_up_in_browser(page, shapes_server, f"newjob-{size}@example.com")
    expect(page.get_by_label("Prompt", exact=True)).to_have_attribute("placeholder", PLACEHOLDER)
    shoot(page, f"{size}-empty")

    page.get_by_label("Prompt", exact=True).fill("two yellow stars on a blue background")
    page.get_by_label("Images").select_option("2")
    page.get_by_label("Steps").fill("12")
    expect(page.locator("#quote .quote-after")).to_be_visible()
    price = int(page.locator("#quote .quote-price strong").inner_text())
    # the page is scrolled down, as a person who filled the form has it: on a phone the Generate
    # button is at the bottom of the screen (the list below it), on a desktop the page is at its end
    if size == "phone":
        page.evaluate("() => document.querySelector('#generate-form [type=submit]').scrollIntoView({block: 'end'})")
    else:
        page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("() => window.scrollY > 0")
    page.get_by_role("button", name="Generate", exact=True).click()

    card = page.locator("#jobs article.job").first
    in_viewport(page, "#jobs article.job")
    expect(page.locator("#jobs-empty")).to_have_count(0)
    # the balance and "N left after" follow the hold at once
    expect(page.locator("#balance strong")).to_have_text(str(200 - price))
    expect(page.locator("#quote .quote-after")).to_have_text(f"{200 - 2 * price} left after")
    if card.locator(".thumbs-pending").count():  # still running: one tile per image to come
        expect(card.locator(".thumb-pending")).to_have_count(2)
        shoot(page, f"{size}-running")

    expect(card.locator(".thumbs img")).to_have_count(2, timeout=120_000)
    expect(card.locator(".status")).to_have_text("Succeeded")
    result = card.locator("figure.result").first
    expect(result.get_by_role("button", name=re.compile(r"^More like this \d+ cr$"))).to_be_visible()
    expect(result.get_by_role("link", name="Remix")).to_be_visible()
    expect(result.get_by_role("button", name=re.compile(r"^Upscale 2× \d+ cr$"))).to_be_visible()
    card.scroll_into_view_if_needed()
    shoot(page, f"{size}-finished")

    href = result.get_by_role("link", name="Remix").get_attribute("href")
    image_id = result.locator("a.thumb").get_attribute("href").rsplit("/", 1)[1]
    # "More like this" queues its job into the list, in view
    result.get_by_role("button", name=re.compile("More like this")).click()
    expect(page.locator("#jobs article.job")).to_have_count(2)
    in_viewport(page, "#jobs article.job")
    expect(page.locator("#jobs article.job").first.locator(".job-meta")).to_contain_text("Variation")

    # an outpaint opened from a result is priced at once, before any field is touched
    page.goto(f"{shapes_server}/?mode=outpaint&source_image={image_id}")
    expect(page.locator("#quote .quote-price strong")).to_have_text(re.compile(r"^\d+$"))
    # Remix brings the prompt and settings back
    page.goto(shapes_server + href)
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("two yellow stars on a blue background")
    expect(page.get_by_label("Steps")).to_have_value("12")

    assert quote_urls and not [u for u in quote_urls if "csrf" in u.lower()], quote_urls
    assert errors == [], "\n".join(errors)


def test_the_quote_agrees_with_typed_parameters_and_warns_about_unknown_words(shapes_server, screen):
    page, size, errors = screen
    sign_up_in_browser(page, shapes_server, f"typed-{size}@example.com")
    prompt = page.get_by_label("Prompt", exact=True)

    prompt.fill("a red circle on a blue background --ar 16:9 --n 4 --steps 12")
    typed = page.locator("#quote .quote-typed")
    expect(typed).to_contain_text("4 images")
    # the fields show what the prompt set, so the form and the quote agree
    expect(page.get_by_label("Images")).to_have_value("4")
    expect(page.get_by_label("Steps")).to_have_value("12")
    size_value = page.get_by_label("Size").input_value()
    width, height = map(int, size_value.split("x"))
    assert width > height, size_value
    expect(typed).to_contain_text(f"{width}×{height}")
    api = page.request.get(f"{shapes_server}/api/v1/quote?width={width}&height={height}&n=4&steps=12").json()
    expect(page.locator("#quote .quote-price strong")).to_have_text(str(api["credits"]))
    expect(page.locator("#quote .quote-warning")).to_have_count(0)
    page.locator("#quote").scroll_into_view_if_needed()
    shoot(page, f"{size}-typed")

    prompt.fill("a cat astronaut on a red background")
    warning = page.locator("#quote .quote-warning")
    expect(warning).to_contain_text("has never seen: cat, astronaut")
    expect(page.locator("#quote .quote-price")).to_be_visible()  # warned, not refused
    warning.scroll_into_view_if_needed()
    shoot(page, f"{size}-warning")

    # an example chip fills the prompt (no reload) and the warning goes
    page.locator("a[data-example]", has_text="two yellow stars").click()
    expect(prompt).to_have_value("two yellow stars")
    expect(warning).to_have_count(0)
    assert errors == [], "\n".join(errors)


PNG_IN_PAGE = """async ([w, h]) => {
    const canvas = document.createElement('canvas');
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#3b82f6'; ctx.fillRect(0, 0, w, h);
    ctx.fillStyle = '#f59e0b'; ctx.fillRect(w / 4, h / 4, w / 2, h / 2);
    const blob = await new Promise((ok) => canvas.toBlob(ok, 'image/png'));
    window.__png = new File([blob], 'dropped.png', { type: 'image/png' });
}"""


def test_uploads_take_a_drop_or_a_paste_and_show_a_preview(shapes_server, screen):
    page, size, errors = screen
    sign_up_in_browser(page, shapes_server, f"upload-{size}@example.com")
    page.evaluate(PNG_IN_PAGE, [96, 64])

    # a paste on a text-to-image form makes it image to image, with the pasted start image
    page.evaluate(
        """() => {
            const dt = new DataTransfer();
            dt.items.add(window.__png);
            document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
        }"""
    )
    expect(page.locator("input[name=mode][value=img2img]")).to_be_checked()
    preview = page.locator(".for-image-modes .dropzone-preview").first
    expect(preview).to_be_visible()
    expect(page.locator(".dropzone-name").first).to_contain_text("dropped.png")
    expect(page.locator("#quote .quote-price strong")).to_have_text(re.compile(r"^\d+$"))

    # outpaint, with an image dropped on the zone: priced at once, with the frame's defaults
    page.locator(".mode-tab", has_text="Outpaint").click()
    page.evaluate(PNG_IN_PAGE, [64, 128])
    page.locator(".for-image-modes [data-dropzone]").first.dispatch_event(
        "drop",
        {
            "dataTransfer": page.evaluate_handle(
                "() => { const d = new DataTransfer(); d.items.add(window.__png); return d; }"
            )
        },
    )
    expect(page.locator("#source-height")).to_have_value("128")
    expect(page.get_by_label("Left")).to_have_value("16")  # the frame fits the image: a quarter a side
    expect(page.locator("#quote .quote-price strong")).to_have_text(re.compile(r"^\d+$"))
    expect(preview).to_have_js_property("naturalHeight", 128)
    preview.scroll_into_view_if_needed()
    shoot(page, f"{size}-upload")
    assert errors == [], "\n".join(errors)


def test_recent_prompts_are_only_ones_own(shapes_server, browser):
    owner = browser.new_context(viewport=VIEWPORTS["desktop"])
    page = owner.new_page()
    sign_up_in_browser(page, shapes_server, "history-owner@example.com")
    for prompt in ("a green square on a red background", "one red circle"):
        page.get_by_label("Prompt", exact=True).fill(prompt)
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.locator("#jobs article.job .job-prompt").first).to_have_text(prompt)
    page.reload()
    history = page.locator("#prompt-history")
    history.locator("summary").click()
    items = history.locator("[data-prompt]")
    expect(items).to_have_text(["one red circle", "a green square on a red background"])
    shoot(page, "desktop-history")
    items.nth(1).click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a green square on a red background")
    owner.close()

    other = browser.new_context(viewport=VIEWPORTS["phone"])
    page = other.new_page()
    sign_up_in_browser(page, shapes_server, "history-other@example.com")
    expect(page.locator("#prompt-history")).to_have_count(0)
    assert "green square" not in page.content()
    other.close()


def test_the_quote_url_names_its_fields_only(shapes_server, screen):
    page, size, errors = screen
    sign_up_in_browser(page, shapes_server, f"quote-url-{size}@example.com")
    with page.expect_request(lambda r: "/generate/quote" in r.url) as asked:
        page.get_by_label("Prompt", exact=True).fill("a red circle")
    sent = parse_qs(urlparse(asked.value.url).query)
    assert sent["prompt"] == ["a red circle"]
    assert "csrf_token" not in sent and "request_id" not in sent, sent  # kept out of access logs
    assert asked.value.headers.get("x-csrf-token")  # htmx sends it as a header, as on every request
    assert errors == [], "\n".join(errors)
