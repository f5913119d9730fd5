"""The Streamlit app in Debian chromium (Playwright) against a real app, a real Redis and real images."""

import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

import redis as redis_lib

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
# Screenshots go to a temporary folder; `make screenshots` points this at docs/screenshots
# to refresh the README's pictures. A test run never touches tracked files.
SHOTS = Path(os.environ.get("CBIR_SCREENSHOTS") or tempfile.mkdtemp(prefix="cbir-shots-"))
TIMEOUT = 60_000


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)
    pg.goto(app_server.url)
    yield pg
    context.close()


def login(page, username, password):
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def logged_in(page, username="researcher", password="umons2024"):
    heading = page.get_by_role("heading", name="🔎 Search", exact=True)
    for attempt in range(3):
        login(page, username, password)
        try:  # on a loaded machine a click landing while a rerun redraws the page can be lost
            # (the first click on a fresh server is tested alone in test_app_login_gate.py)
            heading.wait_for(timeout=20_000)
            break
        except Exception:
            if attempt == 2 or page.get_by_label("Username").count() == 0:
                raise
    page.get_by_text("Images indexed").wait_for()
    settled(page)  # the login's last rerun (the cookie's) done: a click now is not lost in it


def settled(page):
    """Wait until Streamlit has finished its rerun (the "Running..." widget is gone)."""
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")


def choose(page, combobox, option: str) -> None:
    """Pick `option` in a select box; a rerun landing while the list is open closes it, so retry."""
    for attempt in range(3):
        settled(page)
        combobox.click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            break
        except Exception:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    settled(page)


def click_until(page, target, expected, tries: int = 3) -> None:
    """Click ``target`` once the app is idle, and again if ``expected`` does not show within
    20 s: on a loaded machine a click landing while a rerun redraws the page can be lost.
    Only for quick, repeatable actions (a second click must do no harm); the last click
    waits the full timeout, in case the action is merely slow."""
    for attempt in range(tries):
        settled(page)
        target.click()
        try:
            expected.wait_for(timeout=20_000 if attempt < tries - 1 else TIMEOUT)
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise


def run_search(page):
    click_until(page, page.get_by_role("button", name="Search", exact=True), page.get_by_text(re.compile("^Results for")))


def test_login_page_lists_demo_accounts(page):
    page.get_by_text("Demo accounts").wait_for()
    assert page.get_by_text("umons2024").count() >= 1


def login_shows(page, username: str, password: str, expected) -> None:
    """Log in until ``expected`` shows: a click that lands while the app is still on a rerun
    (a cold app's first run, or the reload after a session ended) can be dropped."""
    for attempt in range(3):
        settled(page)
        login(page, username, password)
        try:
            expected.wait_for(timeout=20_000)
            break
        except Exception:
            if page.get_by_label("Username").count() == 0:  # logged in, the page still drawing: wait for it
                expected.wait_for()
                break
            if attempt == 2:
                raise


def test_wrong_password_shows_error(page):
    login_shows(page, "student", "not-the-password", page.get_by_text("Wrong username or password"))
    assert page.get_by_text("Images indexed").count() == 0


def test_search_by_collection_image(page):
    logged_in(page)
    page.get_by_role("button", name=re.compile("Random")).click()
    run_search(page)
    page.locator(".js-plotly-plot").first.wait_for()  # drawn after the grid
    expect(page.locator(".cbir-hit")).to_have_count(10)
    assert page.get_by_text("P@10").count() >= 1 and page.get_by_text("AP", exact=True).count() >= 1
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ CSV").click()
    rows = open(download.value.path()).read().splitlines()
    assert rows[0].startswith("query_id,query_label,metric,backend,method,list,rank,id") and len(rows) == 11
    page.wait_for_timeout(1000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "search.png"), full_page=True)


@pytest.mark.parametrize("width,height", [(1280, 720), (390, 844)], ids=["projector", "phone"])
def test_first_result_row_is_in_view_after_search(browser, app_server, width, height):
    """A projector at 1280x720 and a phone: after Search the query and its first results are in
    view without scrolling (the first result sat at y=976 at 1280x720; a phone stacked one per line)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    try:
        page.goto(app_server.url)
        logged_in(page)
        run_search(page)
        settled(page)
        page.locator(".cbir-hit").nth(9).wait_for()
        row = [page.locator(".cbir-query").first] + [page.locator(".cbir-hit").nth(i) for i in range(4 if width > 1000 else 1)]
        boxes = None
        for _ in range(50):  # the picker folds and the thumbnails load: wait for the layout to settle
            page.wait_for_timeout(200)
            boxes, before = [item.bounding_box() for item in row], boxes
            if boxes == before:
                break
        assert all(0 <= b["y"] and b["y"] + b["height"] <= height for b in boxes), boxes
        assert len({round(b["y"]) for b in boxes}) == 1, boxes  # one row: the query beside its results
        expect(page.get_by_role("button", name="🎲 Random")).to_be_hidden()  # the picker folded away
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"search-{width}x{height}.png"))
    finally:
        context.close()


def test_query_picker_finds_pages_and_picks(page):
    """The picker of a large collection: filter by text, page through thumbnails, pick one."""
    logged_in(page)
    for attempt in range(3):  # typed while a rerun redraws the page after the login, Enter can be lost
        settled(page)
        page.get_by_label("Find an image").fill("bus")
        page.keyboard.press("Enter")
        try:
            page.get_by_text("100 images match “bus” · page 1 of 9").wait_for(timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    tiles = page.locator("[class*='st-key-cbir_tile_search_picker_']")
    first = tiles.nth(0).get_by_role("button").inner_text()
    click_until(page, page.get_by_role("button", name="▶"), page.get_by_text("page 2 of 9"))
    expect(tiles.nth(0).get_by_role("button")).not_to_have_text(first)  # page 2's tiles drawn, not only its caption
    # a click on the picture picks it too (only the id button under it did)
    tile = tiles.nth(1)
    for attempt in range(3):  # a click landing while a rerun redraws the page can be lost on a loaded machine
        settled(page)
        # read once the run is done: under load the caption said "page 2" while page 1's tiles were
        # still drawn (301 was read, then 313, drawn over it, was clicked: three times in CI)
        other = tile.get_by_role("button").inner_text().strip().removeprefix("✓ ")
        tile.locator("img").click(force=True)  # where a user clicks: force skips the check that the img itself is on top
        try:
            page.get_by_text(f"query {other} · buses").wait_for(timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    click_until(page, page.get_by_role("button", name="312", exact=True), page.get_by_text("query 312 · buses"))
    page.wait_for_timeout(500)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "picker.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 1000})
    run_search(page)
    page.get_by_text("Results for query 312").wait_for()
    click_until(page, page.get_by_text("choose another"), page.get_by_label("Find an image"))  # folded after Search
    # a pick redraws only the picker: it says that the results are still the previous query's
    click_until(page, page.get_by_role("button", name="313", exact=True),
                page.get_by_text(re.compile(r"chosen: query 313 · buses · the results below are for query 312: press Search")))
    settled(page)
    page.get_by_label("Find an image").fill("no-such-image")
    page.keyboard.press("Enter")
    page.get_by_text(re.compile("^0 images match “no-such-image”")).wait_for()


def test_upload_search(page):
    logged_in(page)
    page.get_by_text("Upload", exact=True).click()
    page.locator("input[type=file]").set_input_files(str(ROOT / "image.orig" / "412.jpg"))
    page.get_by_text("uploaded query").wait_for()
    run_search(page)
    page.get_by_text("No precision/recall for an uploaded image").wait_for()  # drawn after the grid
    expect(page.locator(".cbir-hit")).to_have_count(10)
    first = page.locator(".cbir-hit").first.inner_text()
    assert "id 412" in first  # the same picture is its own nearest neighbour


def test_upload_not_an_image_is_a_clear_error(page, tmp_path):
    logged_in(page)
    page.get_by_text("Upload", exact=True).click()
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"this is not a picture" * 20)
    page.locator("input[type=file]").set_input_files(str(bad))
    page.get_by_text("not an image").wait_for()
    assert page.get_by_text("Traceback").count() == 0


def test_two_models_with_rrf_show_combined_tab(page):
    logged_in(page)
    sidebar = page.locator("section[data-testid='stSidebar']")
    choose(page, sidebar.get_by_role("combobox", name="Models"), "EfficientNet-Lite1")
    page.get_by_text("Fusion", exact=True).wait_for()
    choose(page, page.get_by_role("combobox", name="Fusion"), "Reciprocal rank fusion")
    run_search(page)
    tab = page.get_by_role("tab", name="Combined", exact=True)
    expect(tab).to_have_attribute("aria-selected", "true")  # a fusion opens on its own tab
    page.get_by_text("every model and the fusion").wait_for()
    expect(page.get_by_role("tab")).to_have_count(3)
    page.get_by_text(re.compile(r"^AP per model: EfficientNet-Lite0 0\.\d{3} · EfficientNet-Lite1 0\.\d{3} → fused")).wait_for()
    # another method re-fuses the rankings already computed, without a new search, and the
    # class keeps looking at the same tab (it jumped back to the first model's)
    searches = page.get_by_text(re.compile(r"searche?s? performed")).inner_text()
    choose(page, page.get_by_role("combobox", name="Fusion"), "Average")
    page.get_by_text(re.compile(r"^Re-fused live with Average in [\d.]+ ms")).wait_for()
    expect(tab).to_have_attribute("aria-selected", "true")
    expect(page.get_by_text("Weight of EfficientNet-Lite0")).to_have_count(0)  # average reads no weight: no slider
    page.get_by_role("tab", name="EfficientNet-Lite1", exact=True).click()
    choose(page, page.get_by_role("combobox", name="Fusion"), "Weighted")
    page.get_by_text(re.compile(r"^Re-fused live with Weighted \(EfficientNet-Lite0 1, EfficientNet-Lite1 1\) in [\d.]+ ms")).wait_for()
    expect(page.get_by_role("tab", name="EfficientNet-Lite1", exact=True)).to_have_attribute("aria-selected", "true")
    page.get_by_text("Weight of EfficientNet-Lite0").wait_for()
    assert page.get_by_text(re.compile(r"searche?s? performed")).inner_text() == searches
    # the settings are in the URL: a reload (or the link, shared) opens the same search, run at once
    # (waited for: under load the browser writes the URL a moment after the run that set it)
    for setting in ("models=EfficientNet-Lite1", "fusion=Weighted", "q=[^&]+"):
        expect(page).to_have_url(re.compile(rf"[?&]{setting}(&|$)"))
    page.reload()
    page.get_by_text(re.compile("^Results for query")).wait_for()
    expect(page.get_by_role("tab")).to_have_count(3)
    expect(page.get_by_role("combobox", name="Fusion")).to_have_value("Weighted")


def test_a_hand_written_link_names_settings_by_key_and_says_what_it_left_out(page, app_server):
    """Streamlit binds a setting to the URL by its menu label: metric=euclidean (the API's
    name) was dropped without a word. Keys and labels in any case are read; what names
    nothing is said; the linked search runs at once, here side by side."""
    logged_in(page)
    page.goto(f"{app_server.url}/?q=412&metric=euclidean&k=20&models=efficientnet_lite0&models=EFFICIENTNET-LITE1"
              "&fusion=rrf&view=side%20by%20side&index=annoy")
    page.get_by_text("Results for query 412", exact=False).wait_for(timeout=TIMEOUT)
    page.get_by_text(re.compile(r"Left out of this link, as it names nothing here: index=annoy\. The other settings are applied")).wait_for()
    sidebar = page.locator("section[data-testid='stSidebar']")
    expect(sidebar.get_by_role("combobox", name="Metric")).to_have_value("Euclidean")
    expect(sidebar.get_by_role("radio", name="20", exact=True)).to_be_checked()
    expect(page.get_by_role("combobox", name="Fusion")).to_have_value("Reciprocal rank fusion")
    page.get_by_text(re.compile(r"Results for query 412 · Euclidean distance, centred · top 20")).wait_for()
    # side by side: a column per list (no tabs), each with its 20 results
    expect(page.get_by_role("tab")).to_have_count(0)
    columns = page.locator("[data-testid='stColumn']").filter(has=page.locator(".cbir-hit"))
    expect(columns).to_have_count(3, timeout=TIMEOUT)
    for i in range(3):
        expect(columns.nth(i).locator(".cbir-hit")).to_have_count(20)
    expect(columns.nth(2)).to_contain_text("Combined")
    settled(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "side-by-side.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 1300})
    choose(page, sidebar.get_by_role("combobox", name="Metric"), "Cosine")  # the settings changed: the note goes
    expect(page.get_by_text(re.compile("Left out of this link"))).to_have_count(0)
    # an empty value (it cleared the models), a second value (Streamlit took the first, the page the last q)
    # and numbers a slider cannot take
    note = page.get_by_text(re.compile(r"names nothing here: models= \(empty\), metric=manhattan, k=50 \(one value only\), "
                                       r"q=no-such-image \(no such image in this collection\), n=500 \(a number from 1 to 100\), "
                                       r"alpha=abc/2 \(one value only: the default is used\), alpha=abc \(a number from 0 to 20\)"))
    for attempt in range(2):
        # opened again once: under load (ci42, and 1 in 6 runs here beside three other browser tests) the
        # page ended on ?q=0&models= without its note; the cause is not found (see the README's Known limits)
        page.goto(f"{app_server.url}/?q=no-such-image&q=412&metric=manhattan&models=&k=10&k=50&n=500&alpha=abc&alpha=2")
        try:
            note.wait_for(timeout=TIMEOUT if attempt else 30_000)
            break
        except PlaywrightTimeout:
            if attempt:
                raise
    expect(sidebar.get_by_text("EfficientNet-Lite0", exact=True).first).to_be_visible()  # the default model kept
    expect(page).not_to_have_url(re.compile(r"[?&](k|models)="))  # (the URL follows the run: waited for)


def test_why_did_this_match_opens_the_pair_with_its_heatmaps(page, app_server):
    """*Why?* under a result opens the query and that result with their heatmaps, for a
    collection query (with two models: the dialog switches between them) and for an upload."""
    logged_in(page)
    page.goto(f"{app_server.url}/?q=412&models=efficientnet_lite0&models=efficientnet_lite1")
    page.get_by_text("Results for query 412", exact=False).wait_for(timeout=TIMEOUT)
    page.get_by_role("tab", name="EfficientNet-Lite0").click()
    panel = page.get_by_role("tabpanel", name="EfficientNet-Lite0")
    second = panel.locator(".cbir-hit").nth(1)
    result_id = re.search(r"id (\S+)", second.inner_text()).group(1)
    dialog = page.get_by_role("dialog")
    click_until(page, panel.get_by_role("button", name="Why?").nth(1), dialog)
    expect(dialog).to_contain_text(f"query 412 (left) and result {result_id} (right) · EfficientNet-Lite0", timeout=TIMEOUT)
    expect(dialog).to_contain_text(re.compile(r"split the cosine similarity of the two descriptors centred on the collection "
                                              r"mean, \d\.\d{3}, exactly"))
    picture = dialog.locator("img").first
    expect(picture).to_be_visible()
    assert picture.evaluate("img => img.naturalWidth > img.naturalHeight")  # the pair side by side
    settled(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    dialog.screenshot(path=str(SHOTS / "explain.png"))
    dialog.get_by_role("radio", name="EfficientNet-Lite1").click()  # the same pair under the other model
    expect(dialog).to_contain_text(f"result {result_id} (right) · EfficientNet-Lite1", timeout=TIMEOUT)
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    # an uploaded query (the search folded the picker away)
    click_until(page, page.get_by_text("Query — choose another"), page.get_by_text("Upload", exact=True))
    page.get_by_text("Upload", exact=True).click()
    page.locator("input[type=file]").set_input_files(str(ROOT / "image.orig" / "412.jpg"))
    page.get_by_text("uploaded query").wait_for()
    run_search(page)
    page.get_by_text("Results for uploaded image", exact=False).wait_for()
    panel = page.get_by_role("tabpanel").first
    click_until(page, panel.get_by_role("button", name="Why?").first, dialog)
    expect(dialog).to_contain_text("the uploaded query (left) and result 412 (right)", timeout=TIMEOUT)
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    # another upload, not searched yet: the results are the old upload's, and Why? says so rather than explain the new one
    click_until(page, page.get_by_text("Query — choose another"), page.locator("[data-testid='stFileUploaderDropzone']"))
    # the first file removed, then the second set (set over a file already there, it was lost 2 times in 3)
    page.get_by_role("button", name="Remove 412.jpg").click()
    expect(page.locator("[data-testid='stFileChip']")).to_have_count(0)
    settled(page)
    page.locator("input[type=file]").set_input_files(str(ROOT / "image.orig" / "100.jpg"))
    page.get_by_text("These results are for the previous query").wait_for()  # (a new upload beside old results said nothing)
    settled(page)
    click_until(page, page.get_by_role("tabpanel").first.get_by_role("button", name="Why?").first, dialog)
    expect(dialog).to_contain_text("for an uploaded image that is no longer on the page", timeout=TIMEOUT)
    assert page.get_by_text("Traceback").count() == 0


def test_evaluate_page_compares_a_recipe_with_the_store(page):
    """A descriptor recipe as a row beside the stored vectors (every image described again,
    with a progress bar), compared query by query. The centred recipe and the store centred at
    search time (the default) are two computation paths to one figure: within 2e-3 mAP."""
    logged_in(page)
    page.locator("[data-testid='stSidebarNav']").get_by_text("Evaluate").click()
    form = page.locator("[data-testid='stForm']").filter(has_text="Run evaluation")
    choose(page, form.get_by_role("combobox", name="Descriptor recipes (each model alone, cosine; extracted now)"),
           "centred: today's, centred on the collection's mean: same extraction (x1 the pixels of one pass)")
    settled(page)
    page.get_by_role("button", name="Run evaluation").click()
    page.get_by_text("Done: 2 evaluation(s) over 1,000 queries each").wait_for(timeout=180_000)
    page.get_by_text(re.compile("Δ mAP against EfficientNet-Lite0 · Cosine")).first.wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ JSON").click()
    rows = json.loads(open(download.value.path()).read())
    assert [r["label"] for r in rows] == ["EfficientNet-Lite0 · Cosine", "EfficientNet-Lite0 · centred · Cosine"]
    c = rows[1]["comparison"]
    assert abs(c["delta_mAP"]) < 2e-3 and c["queries_paired"] == 1000 and rows[0]["centred"], c  # both 0.8771 on Lite0


def test_a_label_filter_hides_results_and_keeps_their_marks(page, app_server):
    """"Show only" a label: the other tiles hide, their ranks and the measures stay those of the
    whole list, and a mark on a hidden result survives to Refine."""
    logged_in(page)
    page.goto(f"{app_server.url}/?q=150&k=50")  # a beach: mountains, monuments and food among its 50 (Lite0)
    hits = page.locator(".cbir-hit")
    expect(hits).to_have_count(50, timeout=TIMEOUT)
    labels = [re.search(r"· (\S+)", hits.nth(i).inner_text()).group(1) for i in range(50)]
    other = next(lab for lab in labels if lab != labels[0])  # a label the first result does not have
    settled(page)
    page.get_by_role("radio", name="👎").nth(0).click()  # on the first result
    pill = page.get_by_role("button", name=other, exact=True)
    settled(page)
    pill.click()
    expect(hits).to_have_count(labels.count(other), timeout=TIMEOUT)
    shown = [hits.nth(i).inner_text() for i in range(labels.count(other))]
    assert all(f"· {other}" in t for t in shown), shown
    ranks = [int(re.search(r"#(\d+)", t).group(1)) for t in shown]  # the whole list's ranks
    assert ranks == [i + 1 for i, lab in enumerate(labels) if lab == other]
    settled(page)
    pill.click()  # the filter off: every tile again, the hidden one's mark kept
    expect(hits).to_have_count(50, timeout=TIMEOUT)
    expect(page.get_by_role("radio", name="👎").nth(0)).to_be_checked()
    click_until(page, page.get_by_role("button", name="Refine"),
                page.get_by_text(re.compile(r"1 round\(s\) of Rocchio refinement \(the last with 0 👍, 1 👎\)")))


def test_search_settings_survive_a_visit_to_another_page(page):
    """The settings are kept for the session and in the URL; results that no longer match the
    sidebar say which settings changed (the sidebar said Euclidean, the results Cosine)."""
    logged_in(page)
    run_search(page)
    sidebar = page.locator("section[data-testid='stSidebar']")
    choose(page, sidebar.get_by_role("combobox", name="Metric"), "Euclidean")
    page.get_by_text("These results are for the previous metric: press Search to update them.").wait_for()
    # the session holds k=20 once the warning names it (the URL changes at the click already)
    click_until(page, sidebar.get_by_role("radio", name="20", exact=True),
                page.get_by_text("These results are for the previous metric, top k: press Search to update them."))
    page.locator("[data-testid='stSidebarNav']").get_by_text("Evaluate").click()
    page.get_by_role("heading", name="📈 Evaluate", exact=True).wait_for()
    page.locator("[data-testid='stSidebarNav']").get_by_text("Search").click()
    page.get_by_role("heading", name="🔎 Search", exact=True).wait_for()
    expect(sidebar.get_by_role("combobox", name="Metric")).to_have_value("Euclidean")
    expect(sidebar.get_by_role("radio", name="20", exact=True)).to_be_checked()
    expect(page).to_have_url(re.compile(r"(?=.*[?&]metric=Euclidean)(?=.*[?&]k=20)"))
    # the index and re-ranking's n and α count too; a search the page cannot run says what is missing
    choose(page, sidebar.get_by_role("combobox", name="Metric"), "Cosine")
    choose(page, sidebar.get_by_role("combobox", name="Index"), "FAISS (HNSW / IVF-PQ)")
    page.get_by_text("These results are for the previous top k, index: press Search to update them.").wait_for()
    if not page.get_by_text("Upload", exact=True).is_visible():
        page.get_by_text("Query — choose another").click()  # the picker, folded by the search
    page.get_by_text("Upload", exact=True).click()
    page.get_by_text(re.compile(r"previous query, top k, index: upload an image this server can read, or pick a "
                                r"collection image, then press Search\.")).wait_for()


def test_student_does_not_see_admin(page):
    logged_in(page, "student", "multimedia")
    nav = page.locator("[data-testid='stSidebarNav']")
    nav.get_by_text("Evaluate").wait_for()
    assert nav.get_by_text("Admin").count() == 0


def test_evaluate_page(page):
    logged_in(page)
    page.locator("[data-testid='stSidebarNav']").get_by_text("Evaluate").click()
    form = page.locator("[data-testid='stForm']")

    def pick(box: str, option: str) -> None:
        choose(page, form.get_by_role("combobox", name=box, exact=True), option)

    pick("Models", "EfficientNet-Lite1")
    pick("Models", "EfficientNet-Lite2")
    pick("Fusions (2+ models)", "Reciprocal rank fusion")
    pick("Re-ranking (cosine only)", "DBA + αQE")
    settled(page)
    page.get_by_role("button", name="Run evaluation").click()
    page.get_by_text("Average precision per class").wait_for()
    page.locator(".js-plotly-plot").nth(1).wait_for()  # PR curves and the per-class heatmap
    page.get_by_text("Done: 8 evaluation(s) over 1,000 queries each").wait_for()
    assert page.get_by_text("mAP").count() >= 1
    for label, check in (("⬇ CSV", lambda b: b.startswith(b"name,metric,queries,mAP") and b.count(b"\n") == 9),
                         ("⬇ PR figure (PNG)", lambda b: b.startswith(b"\x89PNG")),
                         ("⬇ PR figure (HTML)", lambda b: b"plotly" in b and b"Mean 11-point interpolated PR" in b)):
        with page.expect_download() as download:
            page.get_by_role("button", name=label).click()
        assert check(open(download.value.path(), "rb").read()), label
    # every row against the first (the baseline), paired query by query: a forest plot, and in the JSON
    page.get_by_text(re.compile("Δ mAP against EfficientNet-Lite0 · Cosine")).first.wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ JSON").click()
    rows = json.loads(open(download.value.path()).read())
    assert rows[0]["label"] == "EfficientNet-Lite0 · Cosine" and "comparison" not in rows[0]
    assert all(r["comparison"]["queries_paired"] == 1000 and r["comparison"]["baseline"] == rows[0]["label"] for r in rows[1:])
    dba = next(r["comparison"] for r in rows if r["label"] == "EfficientNet-Lite0 + DBA + αQE · Cosine")
    assert dba["significant"] and dba["ci95"][0] > 0 and abs(dba["delta_mAP"] - (dba["run_mAP"] - dba["baseline_mAP"])) < 2e-6
    assert page.get_by_text("Protocol.").count() >= 1
    page.wait_for_timeout(1000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "evaluate.png"), full_page=True)
    # the weight sweep, on the same page, then its weights sent to Search
    settled(page)
    page.get_by_role("button", name="Sweep the weights").click()
    page.get_by_text(re.compile(r"^Best: EfficientNet-Lite0 [\d.]+, EfficientNet-Lite1 [\d.]+ · mAP 0\.[89]")).wait_for()
    page.get_by_text("11 weightings × 1000 queries").wait_for()
    page.get_by_role("heading", name="Tune fusion weights").scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / "sweep.png"), full_page=False)
    click_until(page, page.get_by_role("button", name="Use these weights"),
                page.get_by_text(re.compile("^Weights from the sweep: EfficientNet-Lite0")))
    run_search(page)
    expect(page.get_by_role("tab", name="Combined", exact=True)).to_have_attribute("aria-selected", "true")
    page.get_by_text(re.compile(r"AP per model: .* → fused")).wait_for()


def hover_a_dot(page, canvas):
    """Move over the map until Vega's tooltip shows a dot; its (x, y) on the page."""
    box = canvas.bounding_box()
    tooltip = page.locator("#vg-tooltip-element")
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
        for fx in [i / 40 for i in range(4, 37)]:
            x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
            page.mouse.move(x, y)
            page.wait_for_timeout(40)
            if tooltip.is_visible() and "id" in tooltip.inner_text():
                return x, y
    raise AssertionError("no dot answered a hover on the map")


def click_a_map_dot(page, check_tooltip: bool = False, centred: bool = True):
    """Open the Map (``centred``: as it opens; else with its Centred switch turned off), hover a
    dot until its tooltip names it, click it and wait for its top 10: (the clicked id, the map's canvas)."""
    page.locator("[data-testid='stSidebarNav']").get_by_text("Map").click()
    page.get_by_text(re.compile(r"^PCA of 1,000 images, centred on the collection's mean · (computed in|read from the cache in)")).wait_for()
    if not centred:
        click_until(page, page.get_by_text("Centred", exact=True), page.get_by_text(re.compile(r"^PCA of 1,000 images, as stored · ")))
    canvas = page.locator("[data-testid='stVegaLiteChart'] svg.marks").first
    canvas.wait_for()
    x, y = hover_a_dot(page, canvas)
    tooltip = page.locator("#vg-tooltip-element")
    if check_tooltip:  # the hovered image's own thumbnail, inline
        assert tooltip.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
        assert tooltip.locator("img").evaluate("img => img.complete && img.naturalWidth") == 64
    hovered = re.search(r"id\s+(\S+)", tooltip.inner_text()).group(1)
    page.mouse.click(x, y)
    page.get_by_text(f"Top 10 for {hovered}").wait_for()
    return hovered, canvas


def test_evaluate_page_shows_centred_and_stored_side_by_side(page):
    """Both centrings chosen: one row each, the stored one named "not centred", and the
    significance section pairs them (centring: +0.0215 mAP for Lite0 on Wang, README)."""
    logged_in(page)
    page.locator("[data-testid='stSidebarNav']").get_by_text("Evaluate").click()
    form = page.locator("[data-testid='stForm']").first
    choose(page, form.get_by_role("combobox", name="Centring", exact=True), "Not centred")
    settled(page)
    click_until(page, page.get_by_role("button", name="Run evaluation"), page.get_by_text("Done: 2 evaluation(s) over 1,000 queries each"))
    with page.expect_download() as download:
        page.get_by_role("button", name="⬇ JSON").click()
    rows = json.loads(open(download.value.path()).read())
    assert [r["label"] for r in rows] == ["EfficientNet-Lite0 · Cosine", "EfficientNet-Lite0 · not centred · Cosine"]
    assert rows[0]["centred"] is True and rows[1]["centred"] is False
    assert rows[1]["comparison"]["significant"] and rows[1]["comparison"]["delta_mAP"] < -0.015


def test_map_page_hover_thumbnail_click_search_and_uploaded_image(page):
    """Hover shows the image's thumbnail, id and label; a click searches with that dot's image;
    an uploaded image is placed and its top 10 ringed."""
    logged_in(page)
    _, canvas = click_a_map_dot(page, check_tooltip=True)
    expect(page.locator(".cbir-hit")).to_have_count(10, timeout=TIMEOUT)  # the grid streams in after the heading
    page.locator("input[type=file]").set_input_files(str(ROOT / "image.orig" / "412.jpg"))
    page.get_by_text("Top 10 for the uploaded image").wait_for()
    expect(page.locator(".cbir-hit").first).to_contain_text("id 412", timeout=TIMEOUT)
    page.get_by_text(re.compile(r"The star: projected on the map's PCA axes in \d+ ms")).wait_for()
    page.wait_for_timeout(1000)
    hover_a_dot(page, canvas)  # the README's screenshot shows a hover
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "map.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 1100})
    # the features as stored: another map, and the same upload searched again that way and placed on it
    settled(page)
    page.get_by_text("Centred", exact=True).click()
    page.get_by_text(re.compile(r"^PCA of 1,000 images, as stored · ")).wait_for()
    page.get_by_text(re.compile(r"^The star: projected on the map's PCA axes in \d+ ms\. Searched by cosine distance, as stored\.$")).wait_for()
    page.get_by_text("Top 10 for the uploaded image").wait_for()
    expect(page.locator(".cbir-hit").first).to_contain_text("id 412", timeout=TIMEOUT)
    settled(page)
    page.get_by_text("Centred", exact=True).click()
    page.get_by_text(re.compile(r"^PCA of 1,000 images, centred on the collection's mean · ")).wait_for()
    # another method: the same upload is placed again, by openTSNE's transform of the new map
    choose(page, page.get_by_role("combobox", name="Method"), "t-SNE")
    page.get_by_text(re.compile(r"^t-SNE of 1,000 images, centred on the collection's mean · ")).wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"The star: placed by t-SNE's transform in \d+ ms")).wait_for()
    page.get_by_text("Top 10 for the uploaded image").wait_for()


def test_a_map_dot_opens_in_search(page):
    """From a clicked dot to the Search page with that image as the query, searched at once, and
    as the map searched it (here the map's Centred switch is off: so is the Search page's)."""
    logged_in(page)
    hovered, _ = click_a_map_dot(page, centred=False)
    page.get_by_text(re.compile(r"Searched by cosine distance, as stored\.$")).wait_for()
    click_until(page, page.get_by_role("button", name="🔎 Open in Search"), page.get_by_role("heading", name="🔎 Search", exact=True))
    page.get_by_text(f"Results for query {hovered}", exact=True).wait_for()
    expect(page).to_have_url(re.compile(rf"[?&]q={hovered}(&|$)"))
    expect(page).to_have_url(re.compile(r"[?&]centre=false(&|$)"))
    expect(page.get_by_role("switch", name="Centre on the collection's mean")).not_to_be_checked()
    expect(page.get_by_text(re.compile("Session State API"))).to_have_count(0)  # (Streamlit's warning when set twice)
    page.get_by_text(re.compile(rf"Results for query {hovered} · Cosine distance · ")).wait_for()  # not ", centred"
    # and back: a centred map's dot opens centred, over the off the Search page remembers (a URL
    # value equal to the switch's default does not override a remembered one)
    hovered, _ = click_a_map_dot(page)
    click_until(page, page.get_by_role("button", name="🔎 Open in Search"), page.get_by_role("heading", name="🔎 Search", exact=True))
    page.get_by_text(re.compile(rf"Results for query {hovered} · Cosine distance, centred · ")).wait_for()
    expect(page.get_by_role("switch", name="Centre on the collection's mean")).to_be_checked()


def test_collection_page_imports_features_and_indexes_on_a_local_dask_cluster(page, app_server, tmp_path):
    """Import features as imported:NAME; then index on a local Dask cluster (the stores are up
    to date: every vector is reused), with the dashboard linked and the workers stopped."""
    import shutil

    import numpy as np

    from cbir.store_format import load_store

    store = load_store(ROOT / "features" / "image.orig" / "efficientnet_lite0")
    np.savez(tmp_path / "mine.npz", ids=store.ids, vectors=np.asarray(store.embeddings)[:, :32])
    created = app_server.features / "image.orig" / "imported:browsertest"
    try:
        logged_in(page)
        page.locator("[data-testid='stSidebarNav']").get_by_text("Collection").click()
        form = page.locator("[data-testid='stForm']").filter(has_text="Features file")
        form.locator("input[type=file]").set_input_files(str(tmp_path / "mine.npz"))
        form.get_by_label("Name").fill("browsertest")
        form.get_by_role("button", name="Import").click()
        page.get_by_text(re.compile(r"^imported 1000 vectors of d=32 as imported:browsertest")).wait_for()
        assert (created / "manifest.json").exists() and not (ROOT / "features" / "image.orig" / "imported:browsertest").exists()
        # an imported model cannot describe an uploaded image: it is skipped with a note (the
        # whole search failed), and the other model's results are shown
        page.locator("[data-testid='stSidebarNav']").get_by_text("Search").click()
        choose(page, page.locator("section[data-testid='stSidebar']").get_by_role("combobox", name="Models"), "Imported: browsertest")
        page.get_by_text("Upload", exact=True).click()
        page.locator("input[type=file]").set_input_files(str(ROOT / "image.orig" / "412.jpg"))
        page.get_by_text("uploaded query").wait_for()
        run_search(page)
        page.get_by_text(re.compile(r"^Skipped for this uploaded image: Imported: browsertest")).wait_for()
        assert "id 412" in page.locator(".cbir-hit").first.inner_text()
        page.locator("[data-testid='stSidebarNav']").get_by_text("Collection").click()
        # its owner deletes it
        form = page.locator("[data-testid='stForm']").filter(has_text="Delete an imported model")
        form.get_by_text("Yes, delete its features").click()
        form.get_by_role("button", name="Delete", exact=True).click()
        page.get_by_text("Deleted imported:browsertest and its features.").wait_for()
        assert not created.exists()
    finally:
        shutil.rmtree(created, ignore_errors=True)  # later tests see the models they expect
    choose(page, page.get_by_role("combobox", name="Models to index"), "EfficientNet-Lite0")
    choose(page, page.get_by_role("combobox", name="Run on"), "Local Dask cluster")
    page.get_by_role("button", name="Index / update").click()
    page.get_by_text(re.compile(r"^Dask dashboard: http://127\.0\.0\.1:\d+/status")).wait_for()
    page.get_by_text("Indexing finished").wait_for()
    # .first: the same line can sit in the progress bar's text and in the message under it (a strict-mode error in CI)
    page.get_by_text(re.compile("efficientnet_lite0: 1000 images in store \\(0 extracted, 1000 reused")).first.wait_for()


def test_admin_adds_user_who_can_log_in(page, browser, app_server):
    logged_in(page, "admin", "password123")
    page.locator("[data-testid='stSidebarNav']").get_by_text("Admin").click()
    form = page.locator("[data-testid='stForm']").filter(has_text="Add a user")
    form.get_by_label("Username").fill("lecturer")
    form.get_by_label("Display name").fill("Lecturer")
    form.get_by_label("Password", exact=True).fill("teach-cbir")
    form.get_by_role("button", name="Add user").click()
    page.get_by_text("User lecturer created").wait_for()
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    other.set_default_timeout(TIMEOUT)
    other.goto(app_server.url)
    logged_in(other, "lecturer", "teach-cbir")
    # the admin disables the lecturer: the open session ends, and the password is refused
    change = page.locator("[data-testid='stForm']").filter(has_text="Status")
    notice = page.get_by_text(re.compile(r"^\w+ is now: role \w+, \w+\.$"))
    for attempt in range(3):
        # under CI load a rerun landing between the clicks can lose one of them: the user chosen,
        # the radio's pending value, or the Apply. Each attempt checks every step and reads the
        # notice, which names the state reached (a second Apply does no harm)
        choose(page, page.get_by_role("combobox", name="User to change"), "lecturer")
        # the form's widgets are keyed by the user chosen: the previous user's radio can linger
        # for a moment beside the new one (a strict-mode error in CI)
        expect(change.get_by_role("radiogroup", name="Status")).to_have_count(1)
        status = change.get_by_role("radiogroup", name="Status")
        settled(page)
        status.get_by_text("disabled", exact=True).click()
        try:
            expect(status.get_by_role("radio", name="disabled")).to_be_checked(timeout=10_000)
            change.get_by_role("button", name="Apply").click()
            expect(notice).to_have_text("lecturer is now: role student, disabled.", timeout=20_000 if attempt < 2 else TIMEOUT)
            break
        except AssertionError:
            if attempt == 2:
                raise
    other.reload()
    other.get_by_label("Username").wait_for()
    login_shows(other, "lecturer", "teach-cbir",
                other.get_by_text("this account is disabled; an admin can enable it again"))
    other.context.close()
    # the log, filtered and exported (cells neutralised for spreadsheets)
    page.get_by_label("User or source contains").fill("lecturer")
    page.keyboard.press("Enter")
    page.get_by_text(re.compile(r"^\d+ of the last \d+ events · user or source contains “lecturer”")).wait_for()  # the filter applied
    for attempt in range(3):  # the caption can be drawn before the run replaces the button with the filtered file
        settled(page)
        with page.expect_download() as download:
            page.get_by_role("button", name="⬇ CSV of these events").click()
        if download.value.suggested_filename == "auth-log-lecturer.csv":
            break
        page.wait_for_timeout(1000)
    assert download.value.suggested_filename == "auth-log-lecturer.csv"  # the name says the filter
    rows = open(download.value.path()).read().splitlines()
    assert rows[0] == "Time,Event,User,Source,Outcome,By" and all(",lecturer," in r for r in rows[1:]), rows
    assert any(",user_disabled," in r for r in rows) and any(",login_refused," in r for r in rows), rows


def test_rerank_and_feedback_round(page):
    logged_in(page)
    sidebar = page.locator("section[data-testid='stSidebar']")
    sidebar.get_by_text("DBA + αQE").click()
    run_search(page)
    page.get_by_text(re.compile("Re-ranked with DBA")).wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    buttons = page.get_by_role("radio", name="👍")
    buttons.nth(0).click()
    page.get_by_role("radio", name="👎").nth(3).click()
    expect(page.get_by_role("radio", name="👎").nth(3)).to_be_checked()  # drawn at once: a mark reruns nothing
    click_until(page, page.get_by_role("button", name="Refine"), page.get_by_text(re.compile(r"1 round\(s\) of Rocchio refinement \(the last with 1 👍, 1 👎\)")))
    page.get_by_text(re.compile("across feedback rounds")).first.wait_for()


def test_centring_is_on_by_default_and_a_toggle_turns_it_off(page, app_server):
    """A search is centred on the collection's mean by default (the header says so); the
    toggle turns it off, the results say they are outdated until Search, the URL keeps it, and
    under DBA + αQE the page says centring costs mAP there (measured)."""
    logged_in(page)
    page.goto(f"{app_server.url}/?q=412&k=10")
    page.get_by_text(re.compile(r"Results for query 412 · Cosine distance, centred · top 10")).wait_for(timeout=TIMEOUT)
    sidebar = page.locator("section[data-testid='stSidebar']")
    toggle = sidebar.get_by_role("switch", name="Centre on the collection's mean")  # st.toggle: a react-aria Switch
    label = sidebar.get_by_text("Centre on the collection's mean", exact=True)  # the input itself is hidden: click its label
    expect(toggle).to_be_checked()
    settled(page)
    label.click()
    expect(toggle).not_to_be_checked()
    page.get_by_text(re.compile("These results are for the previous centring")).wait_for()
    run_search(page)
    page.get_by_text(re.compile(r"Results for query 412 · Cosine distance · top 10")).wait_for()
    expect(page).to_have_url(re.compile(r"[?&]centre=false"))
    expect(page.get_by_text(re.compile("These results are for the previous"))).to_have_count(0)
    settled(page)
    label.click()
    expect(toggle).to_be_checked()
    sidebar.get_by_text("DBA + αQE").click()
    sidebar.get_by_text(re.compile("DBA \\+ αQE does better on the vectors as stored")).wait_for()
    # a hand-written link, any case: read; a value naming nothing: said
    page.goto(f"{app_server.url}/?q=412&centre=Off")  # the CLI's and the API's word
    page.get_by_text(re.compile(r"Results for query 412 · Cosine distance · top 10")).wait_for(timeout=TIMEOUT)
    expect(toggle).not_to_be_checked()
    page.goto(f"{app_server.url}/?q=412&centre=maybe")
    page.get_by_text(re.compile(r"names nothing here: centre=maybe")).wait_for(timeout=TIMEOUT)


def test_lockout_is_shown(page, app_server):
    """Five wrong passwords lock the account; the form says so, and the right one is refused."""
    r = redis_lib.Redis(port=app_server.redis.port)

    def outcomes(outcome: str) -> int:
        lists = ("cbir:auth:log:attempts", "cbir:auth:log")  # failures are logged apart
        log = (json.loads(e) for key in lists for e in r.lrange(key, 0, -1))
        return sum(1 for e in log if e["username"] == "user1" and e["event"] == "login" and e["outcome"] == outcome)

    def attempt(password: str, outcome: str, deadline: float) -> None:
        """One attempt, waited for in the audit log: on a loaded machine a rerun outlasts any
        fixed pause, and a click landing during it replaces the attempt in flight."""
        done = outcomes(outcome)
        while outcomes(outcome) == done:
            if time.monotonic() > deadline:
                shown = page.locator("[data-testid='stAlert']").all_inner_texts()
                pytest.fail(f"no {outcome!r} login logged for user1 in time; the page shows {shown}; "
                            f"app log: {app_server.log.read_text()[-1500:]}")
            login(page, "user1", password)
            retry = time.monotonic() + 20  # a click the app dropped is made again
            while outcomes(outcome) == done and time.monotonic() < min(retry, deadline):
                time.sleep(0.25)

    deadline = time.monotonic() + 180
    while outcomes("failure") < 5:
        attempt(f"wrong-{outcomes('failure')}", "failure", deadline)
    assert outcomes("failure") == 5  # the lock stops the count: later attempts are logged "locked"
    page.get_by_text(re.compile("too many failed logins")).wait_for()
    attempt("demo123", "locked", time.monotonic() + 60)  # the right password is refused while locked
    page.get_by_text(re.compile("too many failed logins")).wait_for()
    assert page.get_by_text("Images indexed").count() == 0
    assert outcomes("success") == 0


def test_pages_need_a_login(browser, app_server):
    """Before login no page is listed and no page URL opens anything but the login form."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    for path in ("/", "/search", "/admin", "/evaluate", "/collection"):
        page.goto(app_server.url + path)
        page.get_by_label("Username").wait_for()
        page.wait_for_timeout(500)
        assert page.get_by_text("Images indexed").count() == 0, path
        assert page.locator("[data-testid='stSidebarNav']").count() == 0, path
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(app_server.url + "/")
    page.get_by_text("Demo accounts").wait_for()
    page.screenshot(path=str(SHOTS / "login.png"))
    context.close()


# -- sessions: deep links, forged cookies, revocation ---------------------------------------
PAGE_HEADINGS = {"/": "🔎 Search", "/evaluate": "📈 Evaluate", "/collection": "🗂️ Collection · image.orig", "/admin": "🛡️ Admin"}


@pytest.mark.parametrize("username,password,paths", [
    ("student", "multimedia", ["/evaluate", "/collection", "/"]),
    ("admin", "password123", ["/admin", "/evaluate", "/collection"]),
])
def test_every_page_url_opens_and_reloads(page, app_server, username, password, paths):
    logged_in(page, username, password)
    for path in paths:
        page.goto(app_server.url + path)
        page.get_by_role("heading", name=PAGE_HEADINGS[path], exact=True).wait_for()
        page.reload()
        page.get_by_role("heading", name=PAGE_HEADINGS[path], exact=True).wait_for()
        assert page.get_by_text("Page not found").count() == 0, path
        assert page.url.split("?")[0].rstrip("/") == (app_server.url + path).rstrip("/"), page.url  # (Search adds ?q=)


def test_the_search_page_by_its_name_opens_search(page, app_server):
    """/search names the default page, whose path is "": after the login the app took it for a
    page the role may not open, and crashed on its roles (None) in every page after."""
    page.goto(app_server.url + "/search?q=412")
    page.get_by_label("Username").wait_for()
    page.wait_for_timeout(1000)
    # the login form, not Streamlit's own "Page not found" dialog (/search is no page path: a hidden alias page)
    expect(page.get_by_text("Page not found")).to_have_count(0)
    logged_in(page)
    page.get_by_role("heading", name="🔎 Search", exact=True).wait_for()
    page.get_by_text("Results for query 412").wait_for()  # the link's query, searched at once
    expect(page.get_by_text("Page not found")).to_have_count(0)
    # logged in, /search by its name again: the Search page, with the link's parameters
    page.goto(app_server.url + "/search?q=7")
    page.get_by_text("Results for query 7", exact=False).wait_for()
    expect(page.get_by_text("Page not found")).to_have_count(0)
    click_until(page, page.locator("[data-testid='stSidebarNav']").get_by_text("Evaluate"),
                page.get_by_role("heading", name="📈 Evaluate", exact=True))
    expect(page.get_by_text("This app has encountered an error")).to_have_count(0)


def _cookie(username: str, key: str) -> str:

    import jwt

    return jwt.encode({"username": username, "exp_date": time.time() + 1800}, key, algorithm="HS256")


def _with_cookie(browser, app_server, value: str, path: str = "/admin"):
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    context.add_cookies([{"name": "cbir_auth", "value": value, "url": app_server.url}])
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)
    pg.goto(app_server.url + path)
    return context, pg


def test_cookie_signed_with_the_published_placeholder_is_refused(browser, app_server, session_tmp):
    from cbir.config import PLACEHOLDER_SECRETS

    for placeholder in PLACEHOLDER_SECRETS:
        context, pg = _with_cookie(browser, app_server, _cookie("admin", placeholder))
        pg.get_by_label("Username").wait_for()
        pg.wait_for_timeout(1500)
        assert pg.get_by_role("heading", name="🛡️ Admin").count() == 0
        assert pg.get_by_text("Images indexed").count() == 0
        context.close()
    # control: the same cookie signed with this install's random secret does open the page
    secret = (session_tmp / "app" / "var" / "secret_key").read_text().strip()
    context, pg = _with_cookie(browser, app_server, _cookie("admin", secret))
    pg.get_by_role("heading", name="🛡️ Admin", exact=True).wait_for()
    context.close()


def test_a_cookie_of_another_algorithm_is_no_cookie(browser, app_server):
    """alg "none" (or any but HS256) raised InvalidAlgorithmError in the cookie check: the page
    showed "Unexpected problem" and no login form until the cookie was cleared."""
    import base64

    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    forged = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'username': 'admin', 'exp_date': time.time() + 1800})}."
    context, pg = _with_cookie(browser, app_server, forged)
    pg.get_by_label("Username").wait_for()
    pg.wait_for_timeout(1000)
    assert pg.get_by_text("Unexpected problem").count() == 0
    assert pg.get_by_role("heading", name="🛡️ Admin").count() == 0
    # the form works: the bad cookie is simply ignored
    login_shows(pg, "student", "multimedia", pg.get_by_role("heading", name="🔎 Search", exact=True))
    context.close()


def test_password_reset_ends_open_sessions_and_old_cookies(browser, app_server, session_tmp):
    from cbir.auth.users import UserStore

    users = UserStore(redis_lib.Redis(port=app_server.redis.port, decode_responses=True))
    if not users.exists("ivy"):
        users.create("ivy", "ivy-Strong-pass-01", "student")
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)
    pg.goto(app_server.url)
    logged_in(pg, "ivy", "ivy-Strong-pass-01")
    old_cookie = next(c["value"] for c in context.cookies() if c["name"] == "cbir_auth")
    users.set_password("ivy", "ivy-Strong-pass-02", actor="admin")
    pg.locator("[data-testid='stSidebarNav']").get_by_text("Evaluate").click()  # any interaction
    pg.get_by_text("Your account changed").wait_for()
    pg.get_by_label("Username").wait_for()
    context.close()
    # the cookie issued before the reset no longer logs anyone in
    context, pg = _with_cookie(browser, app_server, old_cookie, "/evaluate")
    pg.get_by_label("Username").wait_for()
    pg.wait_for_timeout(1500)
    assert pg.get_by_text("Images indexed").count() == 0 and pg.get_by_role("heading", name="📈 Evaluate").count() == 0
    context.close()


# -- hostile names: a file name and labels that are HTML ------------------------------------
HOSTILE_ID = "<iframe srcdoc='<img src=x onerror=parent.__pwned=1>'>"  # a legal file name: no slash
HOSTILE_LABEL = "<img src=x onerror=window.__pwned=2>"


@pytest.fixture
def hostile_app(tmp_path):
    """The app on a collection of four real images, one named as HTML that runs script, all
    labelled with HTML that runs script, and random features imported for them."""
    import shutil
    import sys

    import numpy as np

    from cbir.collection import scan_collection
    from cbir.importing import import_features
    from tests.conftest import COLLECTION, RedisServer, ServiceProcess, free_port, service_env

    root = tmp_path / "images"
    root.mkdir()
    names = [HOSTILE_ID, "a", "b", "c"]
    for i, name in enumerate(names):
        shutil.copy(COLLECTION / f"{i}.jpg", root / f"{name}.jpg")
    import csv

    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "label"), *((n, HOSTILE_LABEL) for n in names)])
    np.savez(tmp_path / "f.npz", ids=np.array(names), vectors=np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    import_features(tmp_path / "f.npz", "rand", scan_collection(root), tmp_path / "features")
    redis = RedisServer(tmp_path / "redis").start()
    port = free_port()
    server = ServiceProcess(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        port, service_env(redis.url, tmp_path, CBIR_LOGIN_RATE="1000", CBIR_COLLECTION=str(root),
                          CBIR_FEATURES_DIR=str(tmp_path / "features")),
        tmp_path / "app.log", ready_path="/_stcore/health",
    )
    try:
        yield server.start()
    finally:
        server.stop()  # by its pid, as the Redis below
        redis.stop()


@contextlib.contextmanager
def browser_page(browser, url: str, width: int = 1400, height: int = 1800):
    """A page of its own browser context (its own cookies: another session) at ``url``;
    the context is closed on exit."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT)
        pg.goto(url)
        yield pg
    finally:
        context.close()


def test_collection_names_and_labels_never_run_as_script(browser, hostile_app):
    with browser_page(browser, hostile_app.url) as pg:
        logged_in(pg, "student", "multimedia")
        shown = pg.locator(".cbir-hit", has_text=HOSTILE_ID)
        # the first image (the hostile one) is the query at first: pick "a" by its id button,
        # then search, each clicked again if a rerun swallowed the click
        click_until(pg, pg.get_by_role("button", name="a", exact=True), pg.get_by_text(re.compile(r"chosen: query a · ")))
        click_until(pg, pg.get_by_role("button", name="Search", exact=True), pg.get_by_text("Results for query a", exact=True))
        settled(pg)
        expect(pg.locator(".cbir-hit")).to_have_count(3)
        pg.wait_for_timeout(500)  # an injected image's onerror fires as soon as it fails to load
        expect(pg.locator(".cbir-hit").first).to_contain_text(HOSTILE_LABEL)  # shown as text
        assert shown.count() == 1 and pg.locator(".cbir-hit iframe, .cbir-hit img").count() == 0
        assert pg.evaluate("window.__pwned") is None


def test_pages_name_the_browser_tab_and_a_refused_page_says_why(page, app_server):
    """Every tab was titled "CBIR workbench"; a researcher opening an /admin link landed on
    Search without a word."""
    page.goto(app_server.url + "/admin")
    login_shows(page, "researcher", "umons2024", page.get_by_role("heading", name="🔎 Search", exact=True))
    page.get_by_text("The Admin page is for admin accounts; you are logged in as a researcher.").wait_for()
    expect(page).to_have_title("Search")
    page.locator("[data-testid='stSidebarNav']").get_by_text("Evaluate").click()
    expect(page).to_have_title("Evaluate")
    expect(page.get_by_text("The Admin page is for")).to_have_count(0)


def test_a_phone_starts_with_the_sidebar_closed(browser, app_server):
    with browser_page(browser, app_server.url, 390, 844) as pg:
        logged_in(pg, "student", "multimedia")
        box = pg.locator("[data-testid='stSidebar']").bounding_box()
        assert box is None or box["x"] + box["width"] <= 0, box  # off screen: the results are not covered
