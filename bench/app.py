"""Click-to-results time of the Streamlit Search page in Debian chromium: the app on
loopback with a real Redis, the bundled model on image.orig/, 10 searches by a random
collection image; prints the median and the maximum."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(**env_extra: str):
    """A real Redis and the Streamlit app on loopback (demo mode); stopped (by pid) on exit.
    Yields (url, state folder)."""
    tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-app-"))
    rport, port = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    env = {**os.environ, "CBIR_REDIS_URL": f"redis://127.0.0.1:{rport}/0", "CBIR_DEMO": "1", "CBIR_VAR_DIR": str(tmp),
           **env_extra}
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
                            "--server.address", "127.0.0.1", "--server.headless", "true"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield url, tmp
    finally:
        app.terminate()
        redis.terminate()
        app.wait(10)
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


#: Debian chromium as the tests drive it.
CHROMIUM = dict(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


@contextlib.contextmanager
def running_app(**env_extra: str):
    """:func:`app_server` and a chromium page logged in as the researcher. Yields (page, url,
    state folder)."""
    from playwright.sync_api import sync_playwright

    with app_server(**env_extra) as (url, tmp), sync_playwright() as p:
        browser = p.chromium.launch(**CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_label("Username").fill("researcher")
        page.get_by_label("Password", exact=True).fill("umons2024")
        page.get_by_role("button", name="Log in").click()
        page.get_by_text("Images indexed").wait_for()
        try:
            yield page, url, tmp
        finally:
            browser.close()


def main() -> None:
    with running_app() as (page, _url, _tmp):
        times = []
        for i in range(11):
            random_button = page.get_by_role("button", name=re.compile("Random"))
            page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")
            page.wait_for_timeout(500)  # the picker's folding animation
            if not random_button.is_visible():  # the picker folds after a search
                page.get_by_text("choose another").click()
            random_button.click()
            page.wait_for_timeout(800)
            query = re.search(r"chosen: query (\S+)", page.get_by_text("chosen: query").inner_text()).group(1)
            t = time.perf_counter()
            page.get_by_role("button", name="Search", exact=True).click()
            # checked on every animation frame (Playwright's own waits poll at up to 500 ms)
            page.wait_for_function("q => document.body.innerText.includes(`Results for query ${q}`) && "
                                   "document.querySelectorAll('.cbir-hit').length >= 10 && "
                                   "document.querySelector('.js-plotly-plot .main-svg') !== null && "
                                   "document.querySelector('[data-stale=true]') === null", arg=query, polling="raf")
            if i:  # the first search also loads the stores
                times.append(time.perf_counter() - t)
    print(f"click to results (10 thumbnails, metrics, PR curve), {len(times)} searches: "
          f"median {1000 * statistics.median(times):.0f} ms, max {1000 * max(times):.0f} ms")


if __name__ == "__main__":
    main()
