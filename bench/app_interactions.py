"""Small actions on the Streamlit Search page, in Debian chromium: how long from the action to
its effect drawn. The results, the fusion controls and the 👍/👎 marks are a fragment
(``st.fragment``): a mark, a fusion method or a weight redraws only them. Two models
(EfficientNet-Lite0 and -Lite1) on image.orig/, a real Redis; prints the median and the
maximum of each action.

    python bench/app_interactions.py [REPEATS]
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import running_app  # noqa: E402


def timed(action, done) -> float:
    t = time.perf_counter()
    action()
    done()
    return time.perf_counter() - t


def tap(page, locator):
    """A click at the element's centre, located before the clock starts: Playwright's click()
    first waits for the element to be stable for two frames, which it would count."""
    box = locator.bounding_box()
    return lambda: page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def shown(page, pattern: str):
    """Waits until the page's text matches ``pattern`` (a regular expression), checked on every
    animation frame: Playwright's own waits poll at up to 500 ms and measured their polling."""
    return lambda: page.wait_for_function("p => new RegExp(p).test(document.body.innerText)", arg=pattern, polling="raf")


def report(name: str, times: list[float]) -> None:
    print(f"{name:<34} n={len(times):>2}  median {1000 * statistics.median(times):6.0f} ms  max {1000 * max(times):6.0f} ms")


def main(repeats: int = 10) -> None:
    with running_app() as (page, _url, _tmp):
        idle = page.locator("[data-testid='stStatusWidget']")
        sidebar = page.locator("[data-testid='stSidebar']")

        def settle() -> None:
            idle.wait_for(state="hidden")
            page.wait_for_timeout(300)

        def choose(box, option: str) -> None:
            box.click()
            page.get_by_role("option", name=option, exact=True).click()
            page.keyboard.press("Escape")

        settle()
        choose(sidebar.get_by_role("combobox", name="Models"), "EfficientNet-Lite1")
        settle()
        page.get_by_role("button", name="Search", exact=True).click()
        page.get_by_text(re.compile("^Results for query")).wait_for()
        page.locator(".cbir-hit:visible").nth(9).wait_for()
        settle()

        marks = []
        thumbs = page.get_by_role("radio", name="👍").locator("visible=true")
        for i in range(repeats):  # a mark reruns nothing (on_change="ignore"): drawn by the browser alone
            marks.append(timed(tap(page, thumbs.nth(i)),
                               lambda i=i: thumbs.nth(i).evaluate("e => new Promise(r => { const f = () => e.checked || "
                                                                  "e.getAttribute('aria-checked') === 'true' ? r() : requestAnimationFrame(f); f(); })")))
            settle()
        report("👍 mark -> drawn", marks)
        page.get_by_role("button", name="Refine").click()
        refine = timed(lambda: None, shown(page, r"1 round\(s\) of Rocchio refinement"))
        settle()

        fusion = page.get_by_role("combobox", name="Fusion")
        methods, cycle = [], ["Reciprocal rank fusion", "Average", "Weighted"]
        for i in range(repeats):
            label = cycle[i % len(cycle)]
            fusion.click()
            option = page.get_by_role("option", name=label, exact=True)
            option.wait_for()
            methods.append(timed(tap(page, option), shown(page, f"Re-fused live with {label}")))
            settle()
        report("fusion method -> results redrawn", methods)

        if page.get_by_role("combobox", name="Fusion").input_value() != "Weighted":
            choose(page.get_by_role("combobox", name="Fusion"), "Weighted")
            settle()
        slider = page.locator("[class*='st-key-w_efficientnet_lite0'] input[type=range]")
        weights, value = [], 1.0
        for _ in range(repeats):
            value = round(value - 0.05, 2)
            slider.focus()
            weights.append(timed(lambda: page.keyboard.press("ArrowLeft"),
                                 shown(page, rf"Weighted \(EfficientNet-Lite0 {value:g}, ")))
            settle()
        report("weight (arrow key) -> results", weights)

        page.get_by_text("choose another").click()
        settle()
        picks = []
        buttons = page.locator("[class*='st-key-search_pick_']").get_by_role("button")
        for i in range(1, min(repeats, 11) + 1):
            image_id = buttons.nth(i).inner_text().strip("✓ ")
            picks.append(timed(tap(page, buttons.nth(i)), shown(page, f"chosen: query {image_id}")))
            settle()
        report("pick a thumbnail -> chosen", picks)
        print(f"Refine with {repeats} marks -> new results: {1000 * refine:.0f} ms (after the click returned)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
