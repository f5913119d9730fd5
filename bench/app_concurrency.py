"""Several people on the Streamlit app at once, in Debian chromium on the same 2 cores as the
server: N browser sessions log in together, then each makes SEARCHES searches by a random
collection image (Lite0 on image.orig/, a real Redis). Prints, per N, the login time (from
"Log in" to the Search page drawn) and the click-to-results time (from *Search* to the
query's 10 results drawn and the run finished), median and maximum, and the clicks whose
effect did not show within 30 s.

    python bench/app_concurrency.py [N ...]      (default: 4 8)
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import CHROMIUM, app_server  # noqa: E402

SEARCHES = 6
LOST_AFTER = 30.0  # seconds: a click with no visible effect by then counts as lost
# every animation frame (Playwright's own waits poll at up to 500 ms)
RESULTS = ("q => document.body.innerText.includes(`Results for query ${q}`) && "
           "document.querySelectorAll('.cbir-hit').length >= 10 && document.querySelector('[data-stale=true]') === null")


async def session(browser, url: str, user: int, logins: list, clicks: list, lost: list) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    page.set_default_timeout(120_000)
    try:
        await page.goto(url)
        await page.get_by_label("Username").fill("researcher")
        await page.get_by_label("Password", exact=True).fill("umons2024")
        t = time.perf_counter()
        await page.get_by_role("button", name="Log in").click()
        await page.get_by_text("images indexed").wait_for()
        logins.append(time.perf_counter() - t)
        rng = random.Random(user)
        for _ in range(SEARCHES):
            await page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")
            await page.wait_for_timeout(500 + rng.randrange(1000))  # a person reads before the next click
            find = page.get_by_label("Find an image")
            if not await find.is_visible():  # folded after a search
                await page.get_by_text("choose another").click()
            query = str(rng.randrange(1000))
            await find.fill(query)
            await find.press("Enter")  # an exact id picks it
            await page.get_by_text(f"chosen: query {query}").wait_for()
            await page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")
            t = time.perf_counter()
            await page.get_by_role("button", name="Search", exact=True).click()
            try:
                await page.wait_for_function(RESULTS, arg=query, polling="raf", timeout=LOST_AFTER * 1000)
                clicks.append(time.perf_counter() - t)
            except Exception:
                lost.append(query)
    finally:
        await context.close()


async def run(n: int) -> None:
    from playwright.async_api import async_playwright

    with app_server() as (url, _tmp):
        async with async_playwright() as p:
            browser = await p.chromium.launch(**CHROMIUM)
            warm = await browser.new_page()  # the first run of the app (imports, stores) is not what is measured
            await warm.goto(url)
            await warm.get_by_label("Username").wait_for(timeout=120_000)
            await warm.close()
            logins, clicks, lost = [], [], []
            await asyncio.gather(*(session(browser, url, u, logins, clicks, lost) for u in range(n)))
            await browser.close()
    ms = lambda xs, f: f"{1000 * f(xs):,.0f} ms" if xs else "—"  # noqa: E731
    print(f"{n} sessions: login median {ms(logins, statistics.median)}, max {ms(logins, max)}; "
          f"click to results ({len(clicks)} searches) median {ms(clicks, statistics.median)}, max {ms(clicks, max)}; "
          f"{len(lost)} click(s) without effect after {LOST_AFTER:.0f} s")


if __name__ == "__main__":
    for count in [int(a) for a in sys.argv[1:]] or [4, 8]:
        asyncio.run(run(count))
