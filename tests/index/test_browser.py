"""The page of `avfeat serve`, driven in headless Chromium (Debian's ``chromium`` and
``chromium-driver`` through selenium; no browser download: the driver path is given, so
Selenium Manager never runs). Skips, saying why, where they are not installed.

`avfeat serve` runs as a user starts it, on a free port, over the small index of test_serve.py.
Screenshots go to $AVFEAT_SCREENSHOTS (`AVFEAT_SCREENSHOTS=benchmarks` refreshes serve_page.png and
serve_sync.png, which the README shows), else to a temp folder: a test run changes no tracked file.
"""

import json
import os
import re
import tempfile
import urllib.request
from pathlib import Path

import pytest

from avfeat.testing.servers import serve_index

from .test_serve import serve_setup

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("AVFEAT_SCREENSHOTS") or tempfile.mkdtemp(prefix="avfeat-shots-"))

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return serve_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def server(setup):
    """`avfeat serve INDEX --port P` in a child process; its base URL once /health answers."""
    with serve_index(setup.index) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1100",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for_state(driver, element_id: str, timeout: float = 60) -> str:
    """Wait until the page marks ``element_id`` done (or error); return the state."""
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, element_id).get_attribute("data-state") in ("done", "error"))
    return driver.find_element(By.ID, element_id).get_attribute("data-state")


# Plays a <video> and reports where playback started and where it got to: the time at the
# first "playing" event, and currentTime once it has moved on 0.3 s (or reached its end).
PLAY = """
const video = arguments[0], done = arguments[arguments.length - 1];
const began = performance.now();
let first = null;
video.addEventListener("playing", () => { if (first === null) first = video.currentTime; }, { once: true });
const check = () => {
  const elapsed = performance.now() - began;
  if (first !== null && (video.currentTime > first + 0.3 || video.paused || video.ended)) {
    done({ first: first, now: video.currentTime, error: video.error && video.error.code });
  } else if (elapsed > 20000) {
    done({ first: first, now: video.currentTime, error: video.error && video.error.code, timeout: true, ready: video.readyState });
  } else {
    setTimeout(check, 50);
  }
};
video.play().then(check).catch((e) => done({ failed: String(e), error: video.error && video.error.code }));
"""

# Each matching element after its text is made six times longer: how many lines it takes (its
# height over its line height), and its text and tooltip.
ONE_LINE = """
return Array.from(document.querySelectorAll(arguments[0])).map((e) => {
  e.textContent = e.textContent.repeat(6);
  e.title = e.textContent;
  const lines = Math.round(e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight));
  return { lines: lines, text: e.textContent, title: e.title };
});"""

LOADED = "return Array.from(document.querySelectorAll('#hits video')).every((v) => v.readyState >= 2);"


def test_page_finds_the_class_of_an_uploaded_video_and_plays_the_hits(browser, server, setup):
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: "videos" in d.find_element(By.ID, "index-info").text)
    assert "16 videos" in browser.find_element(By.ID, "index-info").text
    # A held-out video (another synth seed) searched by its pictures: its class must come first.
    name = sorted(setup.held_classes)[0]
    Select(browser.find_element(By.ID, "side")).select_by_value("visual")
    browser.find_element(By.ID, "file").send_keys(str(setup.held / name))
    assert wait_for_state(browser, "hits") == "done", browser.find_element(By.ID, "status").text
    tiles = browser.find_elements(By.CSS_SELECTOR, "#hits .hit")
    assert len(tiles) == 8
    ids = [tile.get_attribute("data-video-id") for tile in tiles]
    assert len(set(ids)) == 8  # one hit per video
    assert setup.class_of(ids[0]) == setup.held_classes[name]
    assert "#1 · score" in tiles[0].text and ids[0] in tiles[0].text
    # The query itself sits above the hits, playing from the browser's own copy of the file.
    query = browser.find_element(By.CSS_SELECTOR, "#query-view video")
    assert query.get_attribute("src").startswith("blob:") and name in browser.find_element(By.ID, "query-view").text
    # An id stays whole on one line (cut with an ellipsis, the whole of it in the tooltip), even a long one.
    shapes = browser.execute_script(ONE_LINE, "#hits .video-id")
    assert shapes and all(s["lines"] == 1 and s["title"] == s["text"] for s in shapes), shapes

    # The rank-1 player starts at its hit (the #t= media fragment) and plays on.
    start = float(tiles[0].get_attribute("data-start"))
    played = browser.execute_async_script(PLAY, tiles[0].find_element(By.TAG_NAME, "video"))
    assert "failed" not in played and not played.get("timeout") and not played["error"], played
    assert played["first"] >= start - 0.05 and played["now"] > played["first"], (start, played)

    # Where the sound is: the attention map laid over the first hit.
    tiles[0].find_element(By.XPATH, ".//button[contains(., 'where is the sound')]").click()
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("const i = document.querySelector('#hits img.heat'); return i && i.complete && i.naturalWidth > 0;"))
    try:
        WebDriverWait(browser, 20).until(lambda d: d.execute_script(LOADED))  # no loading spinners in the picture
    except Exception:
        pass
    SHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SHOTS / "serve_page.png"))


def test_page_searches_with_an_indexed_span(browser, server, setup):
    browser.get(server + "/")
    video = sorted(setup.classes)[2].removesuffix(".mp4")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#video-ids option[value^='{video}']"))
    video_id = browser.find_element(By.CSS_SELECTOR, f"#video-ids option[value^='{video}']").get_attribute("value")
    browser.find_element(By.ID, "video-id").send_keys(video_id)
    browser.find_element(By.ID, "start").send_keys("0.5")
    browser.find_element(By.ID, "end").send_keys("2")
    browser.find_element(By.ID, "search-video").click()
    assert wait_for_state(browser, "hits") == "done", browser.find_element(By.ID, "status").text
    ids = [tile.get_attribute("data-video-id") for tile in browser.find_elements(By.CSS_SELECTOR, "#hits .hit")]
    assert len(ids) == 8 and video_id not in ids  # "leave this video out" is on by default
    # The query above the hits: the span's id and times, and its player.
    view = browser.find_element(By.ID, "query-view")
    assert video_id in view.text and "0.50 s–2.00 s" in view.text, view.text
    assert "/media/" in view.find_element(By.TAG_NAME, "video").get_attribute("src")
    # A mistake shows the server's one-line message, not a broken page.
    browser.find_element(By.ID, "where").send_keys("colour=red")
    browser.find_element(By.ID, "search-video").click()
    assert wait_for_state(browser, "hits") == "error"
    assert "no column 'colour'" in browser.find_element(By.ID, "status").text


def test_sync_view_plots_the_lag_curve(browser, server, setup):
    browser.get(server + "/")
    browser.find_element(By.CSS_SELECTOR, ".tab[data-panel='sync-panel']").click()
    browser.find_element(By.ID, "sync-file").send_keys(str(setup.held / sorted(setup.held_classes)[1]))
    assert wait_for_state(browser, "sync-curve") == "done", browser.find_element(By.ID, "sync-status").text
    assert browser.find_element(By.ID, "sync-result").text.startswith("offset ")
    # Something was drawn: the curve's blue and the offset's red are on the canvas.
    colours = browser.execute_script("""
const c = document.getElementById('sync-curve'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let blue = 0, red = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i + 2] > 200 && d[i] < 80 && d[i + 3] > 0) blue++;
  if (d[i] > 200 && d[i + 2] < 80 && d[i + 1] < 80 && d[i + 3] > 0) red++;
}
return [blue, red];""")
    assert colours[0] > 200 and colours[1] > 50, colours
    # Both axes are named, and their tick labels are round values evenly spaced.
    curve = browser.find_element(By.ID, "sync-curve")
    assert curve.get_attribute("data-x-name") == "lag (s), positive = audio late" and curve.get_attribute("data-y-name") == "score"
    for axis in ("data-x-ticks", "data-y-ticks"):
        ticks = [float(t) for t in json.loads(curve.get_attribute(axis))]
        steps = {round(b - a, 6) for a, b in zip(ticks, ticks[1:])}
        assert len(ticks) >= 3 and len(steps) == 1, (axis, ticks)
    browser.save_screenshot(str(SHOTS / "serve_sync.png"))


def test_locate_shows_votes_score_and_threshold(browser, server, setup):
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: "videos" in d.find_element(By.ID, "index-info").text)
    browser.find_element(By.ID, "file").send_keys(str(setup.corpus / sorted(setup.classes)[1]))
    assert wait_for_state(browser, "hits") == "done", browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "locate").click()
    WebDriverWait(browser, 60).until(lambda d: "candidate" in d.find_element(By.ID, "status").text or "not found" in d.find_element(By.ID, "status").text
                                     or d.find_element(By.ID, "hits").get_attribute("data-state") == "error")
    assert wait_for_state(browser, "hits") == "done", browser.find_element(By.ID, "status").text
    title = browser.find_element(By.CSS_SELECTOR, "#hits .hit .title").text
    assert re.search(r"· (1 vote|\d+ votes) · score \d\.\d{3} \(threshold \d\.\d{3}\)$", title), title
    assert not re.search(r"(?<!\d)1 votes", browser.find_element(By.ID, "hits").text)


def test_page_has_a_favicon(browser, server):
    browser.get(server + "/")
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel='icon']").get_attribute("href")
    for url in (icon, server + "/favicon.ico"):  # the declared icon, and what browsers ask for anyway
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200 and answer.headers["content-type"].startswith("image/svg+xml"), url


def test_page_fits_a_420_px_window(browser, server, setup):
    size = browser.get_window_size()
    browser.set_window_size(420, 900)
    try:
        browser.get(server + "/")
        WebDriverWait(browser, 30).until(lambda d: "videos" in d.find_element(By.ID, "index-info").text)
        browser.find_element(By.ID, "file").send_keys(str(setup.held / sorted(setup.held_classes)[0]))
        assert wait_for_state(browser, "hits") == "done", browser.find_element(By.ID, "status").text
        width = browser.execute_script("return [document.scrollingElement.scrollWidth, window.innerWidth];")
        assert width[1] <= 420 and width[0] <= width[1], width
        # The controls are stacked: the file drop above the indexed-video form, both full width.
        drop, form = (browser.find_element(By.ID, name).rect for name in ("drop", "by-video"))
        assert form["y"] >= drop["y"] + drop["height"] and abs(form["x"] - drop["x"]) < 2, (drop, form)
        # and the form's fields one under another, each starting at the form's left edge.
        lefts = {round(label.rect["x"]) for label in browser.find_elements(By.CSS_SELECTOR, "#by-video label")}
        assert len(lefts) == 1, lefts
        browser.find_element(By.CSS_SELECTOR, ".tab[data-panel='sync-panel']").click()
        assert browser.execute_script("return document.scrollingElement.scrollWidth;") <= width[1]
    finally:
        browser.set_window_size(size["width"], size["height"])
