"""Several collections in one running app, in Debian chromium: a zip uploaded on the Collection
page becomes a searchable collection (with progress); two sessions search two collections at
the same time and each sees its own results; a link keeps its collection; an admin removes it."""

import contextlib
import io
import re
import zipfile

import pytest
from playwright.sync_api import expect

from tests.conftest import COLLECTION
from tests.integration.test_app_browser import browser_page, choose, click_until, logged_in, login_shows, run_search, settled

pytestmark = [pytest.mark.browser, pytest.mark.redis]

#: the zip's images: two classes of real Wang images in one top folder
TRIP = {"beach": (100, 101, 102, 103), "horses": (700, 701, 702, 703)}


def trip_zip(path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for cls, numbers in TRIP.items():
            for n in numbers:
                z.write(COLLECTION / f"{n}.jpg", f"trip/{cls}/{n}.jpg")
        z.writestr("trip/readme.txt", "not an image")
    path.write_bytes(buf.getvalue())


def result_ids(page) -> list[str]:
    return [re.search(r"id (\S+)", t).group(1) for t in page.locator(".cbir-hit").all_inner_texts()]


def switcher(page):
    return page.locator("[data-testid='stSidebar']").get_by_role("combobox", name="Collection")


def test_a_zip_becomes_a_collection_two_sessions_search_their_own_and_an_admin_removes_it(browser, app_server, tmp_path):
    archive = tmp_path / "trip.zip"
    trip_zip(archive)
    trip_ids = {f"{cls}/{n}" for cls, numbers in TRIP.items() for n in numbers}
    with contextlib.ExitStack() as pages:  # three sessions, each a browser context of its own, closed at the end
        a = pages.enter_context(browser_page(browser, app_server.url))
        b = pages.enter_context(browser_page(browser, app_server.url))
        logged_in(a)  # researcher
        logged_in(b, "student", "multimedia")

        # A: the zip, uploaded on the Collection page, unpacked and indexed with progress
        click_until(a, a.get_by_role("link", name=re.compile("Collection")), a.get_by_text("Collections on this server"))
        a.get_by_role("tab", name="Add from a zip").click()
        form = a.locator("[data-testid='stForm']").filter(has_text="Zip of images")
        form.locator("input[type='file']").set_input_files(str(archive))
        form.get_by_text("trip.zip").wait_for()
        form.get_by_label("Name").fill("trip")
        form.get_by_role("button", name="Upload and index").click()
        a.get_by_text(re.compile("Unpack")).first.wait_for()  # the progress bar's text
        a.get_by_text(re.compile("The collection trip was added from the zip \\(8 images, 1 entry skipped")).wait_for(timeout=180_000)
        a.get_by_text("1 zip entry skipped").wait_for()  # listed (by name, in a table) on the new collection's page
        assert "It is indexed with" in a.locator("[data-testid='stAlert']").first.inner_text()
        assert "collection=trip" in a.url
        assert switcher(a).input_value() == "trip" or "trip" in switcher(a).inner_text()
        a.get_by_role("heading", name=re.compile("Collection · trip")).wait_for()

        # two sessions, two collections, searching at the same time
        click_until(a, a.get_by_role("link", name=re.compile("Search")), a.get_by_role("heading", name="🔎 Search", exact=True))
        a.get_by_role("button", name=re.compile("Random")).click()
        b.get_by_role("button", name=re.compile("Random")).click()
        settled(a)
        settled(b)
        a.get_by_role("button", name="Search", exact=True).click()
        b.get_by_role("button", name="Search", exact=True).click()
        for page, count in ((a, 7), (b, 10)):  # the trip's 7 others (the query left out); 10 of image.orig's
            page.get_by_text(re.compile("^Results for")).wait_for()
            expect(page.locator(".cbir-hit")).to_have_count(count)
        got_a, got_b = result_ids(a), result_ids(b)
        assert set(got_a) <= trip_ids, got_a
        assert not set(got_b) & trip_ids and all(i.isdigit() for i in got_b), got_b
        run_search(b)  # B again, A untouched: each keeps its own
        assert set(result_ids(a)) <= trip_ids and not set(result_ids(b)) & trip_ids

        # a link keeps its page and its collection, even opened before the login (a link to a
        # page other than Search crashed the app once logged in)
        assert "collection=trip" in a.url
        c = pages.enter_context(browser_page(browser, app_server.url + "/evaluate?collection=trip"))
        login_shows(c, "student", "multimedia", c.get_by_role("heading", name="📈 Evaluate", exact=True))
        assert "collection=trip" in c.url and "/evaluate" in c.url, c.url
        assert c.get_by_text("encountered an error").count() == 0
        click_until(c, c.get_by_role("link", name=re.compile("Search")), c.get_by_role("heading", name="🔎 Search", exact=True))
        c.get_by_text("8 images").first.wait_for()  # the picker: the trip's images
        c.get_by_role("button", name=re.compile("Random")).click()
        run_search(c)
        expect(c.locator(".cbir-hit")).to_have_count(7)
        assert set(result_ids(c)) <= trip_ids, result_ids(c)

        # a switch back in the sidebar drops the other collection's results
        choose(a, switcher(a), "image.orig")
        a.get_by_text(re.compile("^Results for")).wait_for(state="detached")
        assert "collection=trip" not in a.url

        # the admin removes it (with its uploaded images); the student's next run falls back
        b.get_by_role("button", name=re.compile("Log out")).click()
        logged_in(b, "admin", "password123")
        click_until(b, b.get_by_role("link", name=re.compile("Collection")), b.get_by_text("Collections on this server"))
        form = b.locator("[data-testid='stForm']").filter(has_text="Remove a collection")
        form.get_by_text("Yes, remove it").click()
        form.get_by_role("button", name="Remove").click()
        b.get_by_text(re.compile("The collection trip was removed with its uploaded images")).wait_for()
        assert not (app_server.collections_root / "trip").exists()
        c.get_by_role("button", name="Search", exact=True).click()
        c.get_by_text(re.compile("was removed; showing")).wait_for()
