"""The web page of `mt serve` (GET /) and what it asks the API for: the search trace and the attention.

The API part (trace, attention, copies, the security headers) runs everywhere. The page itself is
tested in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) driven by
Selenium. Without them those tests are skipped with how to install them, except where
MT_REQUIRE_BROWSER is set (.ci/run sets it after installing them): there a missing browser fails.
A screenshot of each view (output, attention, tree, error, phone width) is saved in the tests'
temporary folder (pytest's basetemp, e.g. /tmp/pytest-of-USER/pytest-N/page-screenshots0/), or in
MT_PAGE_SCREENSHOTS when that names a folder.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import mt_command, mt_env, run_mt
from mt import MTError
from mt.serve.process import ServerProcess

LINES = ["the happy king sees two birds.", "a red car"]
XSS = "<img src=x onerror=alert(1)>"
INSTALL = ("needs Chromium and its driver, and Selenium: apt-get install chromium chromium-driver; "
           "pip install -e '.[test]' (selenium)")


@pytest.fixture(scope="module")
def server(tiny_run: Path) -> Iterator[ServerProcess]:
    try:
        s = ServerProcess.start([*mt_command(), "serve", "-m", str(tiny_run), "--port", "0", "--threads", "1"],
                                env=mt_env())
    except MTError as e:
        pytest.fail(str(e))
    yield s
    s.stop()


def post(server: ServerProcess, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/translate", json=body, timeout=60)


def one(server: ServerProcess, **body: Any) -> dict:
    r = post(server, body)
    assert r.status_code == 200, r.text
    return r.json()["translations"][0]


def refused(server: ServerProcess, body: dict, *fragments: str) -> None:
    r = post(server, body)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert all(f in message for f in fragments), message


# -- the API the page uses -------------------------------------------------------------------------
def best_of(trace: dict) -> list[dict]:
    return [trace["steps"][s][c] for s, c in enumerate(trace["best"])]


def test_trace_best_path_is_the_translation(server: ServerProcess) -> None:
    for beam in (1, 3, 8):
        t = one(server, text=LINES[0], beam=beam, n_best=min(beam, 2), trace=True)
        plain = one(server, text=LINES[0], beam=beam, n_best=min(beam, 2))
        assert (t["translation"], t["score"], t["tokens"]) == (plain["translation"], plain["score"], plain["tokens"])
        trace = t["trace"]
        best = best_of(trace)
        assert [x["piece"] for x in best] == t["tokens"][:-1] + ["</s>"]
        assert best[-1]["finished"] and best[-1]["final_score"] == trace["score"] == t["score"]
        assert [x["log_prob"] for x in best] == pytest.approx(t["token_scores"], abs=1e-6)
        assert trace["beam"] == beam and len(trace["nbest"]) == min(beam, 2)
        for step in trace["steps"]:
            assert 1 <= len(step) <= 2 * beam
            assert len([x for x in step if x["kept"] is not None]) <= beam


def test_trace_and_attention_limits(server: ServerProcess) -> None:
    refused(server, {"texts": LINES, "trace": True}, '"trace"', '"text"')
    refused(server, {"texts": LINES, "attention": True}, '"attention"')
    refused(server, {"text": LINES[0], "trace": True, "greedy": True}, "beam search", "greedy")
    refused(server, {"text": LINES[0], "trace": True, "sample": True}, "beam search", "sampling")
    refused(server, {"text": LINES[0], "trace": True, "beam": 9}, "beam 9", "(8)")
    refused(server, {"text": "a " * 40, "trace": True, "beam": 2}, "at most 64", "max_len_b")
    assert one(server, text="a " * 40, trace=True, beam=2, max_len_a=0, max_len_b=64)["trace"]["steps"]
    assert one(server, text="", trace=True, attention=True, beam=2)["tokens"] == []
    # a text longer than the model's 127 source positions is translated in pieces: no single tree
    refused(server, {"text": "a " * 140, "trace": True, "beam": 2, "max_len_a": 0}, "pieces")


def test_trace_with_a_prefix_forces_its_steps(server: ServerProcess) -> None:
    t = one(server, text=LINES[0], prefix="a red", beam=3, trace=True)
    assert t["translation"].startswith("a red")
    # the prefix's steps: one open row, one allowed token each; then 2 x beam candidates
    lead = list(itertools.takewhile(lambda step: len(step) == 1, t["trace"]["steps"]))
    assert "".join(step[0]["piece"] for step in lead).replace("\u2581", " ").strip() == "a red"
    assert len(t["trace"]["steps"][len(lead)]) == 6
    assert [x["piece"] for x in best_of(t["trace"])] == t["tokens"]


def test_attention_per_layer_and_head(server: ServerProcess, tiny_run: Path) -> None:
    t = one(server, text=LINES[0], attention=True)
    att = t["attention"]
    assert att["target"] == t["tokens"] and att["source"][-1] == "</s>"
    assert (att["layers"], att["heads"]) == (1, 2)  # the tiny run: 1 decoder layer, 2 heads
    for head in att["weights"][0]:
        assert len(head) == len(att["target"]) and all(len(row) == len(att["source"]) for row in head)
        assert all(sum(row) == pytest.approx(1.0, abs=2e-3) for row in head)


def test_copied_words_are_marked(server: ServerProcess) -> None:
    t = one(server, text="the big Москва helps a blue door.")
    words = t["translation"].split()
    assert "Москва" in words and [words[i] for i in t["copies"]] == ["Москва"]
    assert "copies" not in one(server, text="the big Москва helps a blue door.", copy_unseen=False)


def test_security_headers_and_static_files(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "<script" in page.text and "<script>" not in page.text  # one script file, nothing inline
    for name in ("page.js", "page.css", "favicon.svg"):
        r = httpx.get(f"{server.url}/static/{name}", timeout=30)
        assert r.status_code == 200 and r.headers["content-security-policy"] == csp, name
    assert post(server, {"text": "a"}).headers["content-security-policy"] == csp
    assert "innerHTML" not in httpx.get(server.url + "/static/page.js", timeout=30).text
    assert httpx.get(server.url + "/static/nothing.js", timeout=30).status_code == 404
    assert server.url.startswith("http://127.0.0.1:")


def test_mt_translate_trace_writes_the_servers_tree(server: ServerProcess, tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("\n".join([LINES[0], "", LINES[1]]) + "\n", encoding="utf-8")
    r = run_mt("translate", "-m", tiny_run, "-i", tmp_path / "in.txt", "--beam", "3", "--trace",
               tmp_path / "trace.jsonl", "--device", "cpu")
    assert r.returncode == 0, r.explain()
    records = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["id"] for x in records] == [0, 1, 2] and records[1]["steps"] == []
    for record, line, out in zip((records[0], records[2]), LINES, (r.stdout.splitlines()[0], r.stdout.splitlines()[2])):
        served = one(server, text=line, beam=3, trace=True)
        assert served["translation"] == out
        assert record["best"] == served["trace"]["best"] and record["score"] == pytest.approx(served["score"], abs=1e-6)
        assert [len(s) for s in record["steps"]] == [len(s) for s in served["trace"]["steps"]]
    greedy = run_mt("translate", "-m", tiny_run, "--greedy", "--trace", tmp_path / "g.jsonl", stdin="a king\n")
    assert greedy.returncode == 1 and "--trace records beam search" in greedy.stderr
    assert not (tmp_path / "g.jsonl").exists()


# -- the page in a browser -------------------------------------------------------------------------
def browser_paths() -> tuple[str, str] | str:
    """(chromium, chromedriver) or why there is none."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: {INSTALL}"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        return f"no {'chromium' if chromium is None else 'chromedriver'} on PATH: {INSTALL}"
    return chromium, driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("MT_PAGE_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("page-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    found = browser_paths()
    if isinstance(found, str):
        if os.environ.get("MT_REQUIRE_BROWSER"):
            pytest.fail(f"MT_REQUIRE_BROWSER is set but the browser tests cannot run: {found}")
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--window-size=1280,800",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_window_size(1280, 800)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except Exception as e:  # noqa: BLE001 - the page's own error, if any, says more
        error = driver.find_element("id", "error").text or driver.find_element("id", "inside-error").text
        raise AssertionError(f"waiting for {what}: {type(e).__name__}; the page says: {error!r}") from None


def open_page(driver, server: ServerProcess) -> None:
    driver.get(server.url + "/")
    wait_for(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true", "the page")


def translate_on_page(driver, lines: list[str], n_best: int | None = None, beam: int | None = None,
                      shortcut: bool = False) -> list:
    """Type the lines, translate (the button, or Ctrl+Enter) and wait for the output and the inside view."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from selenium.webdriver.support.ui import Select

    if beam is not None:
        Select(driver.find_element(By.ID, "search")).select_by_value("beam")
    source = driver.find_element(By.ID, "source")
    source.clear()
    for k, line in enumerate(lines):
        source.send_keys(line)
        if k < len(lines) - 1:
            source.send_keys(Keys.SHIFT, Keys.ENTER)
    for field, value in (("n-best", n_best), ("beam", beam)):
        if value is not None:
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(str(value))
    driver.execute_script("document.getElementById('output').replaceChildren();")
    if shortcut:
        source.send_keys(Keys.CONTROL, Keys.ENTER)
    else:
        driver.find_element(By.ID, "translate").click()
    items = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#output > li") or False, "the translations")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#tree g.node") or False, "the beam search tree")
    return items


def test_page_shows_what_mt_translate_writes(browser, server: ServerProcess, tiny_run: Path, tmp_path: Path,
                                             shots: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    items = translate_on_page(browser, LINES, shortcut=True)
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    cli = run_mt("translate", "-m", tiny_run, "-i", tmp_path / "in.txt", "--device", "cpu")
    assert cli.returncode == 0, cli.explain()
    assert len(items) == 2
    assert [i.find_element(By.CLASS_NAME, "translation").get_attribute("textContent") for i in items] \
        == cli.stdout.splitlines()
    assert [i.find_element(By.CLASS_NAME, "source").text for i in items] == LINES
    served = one(server, text=LINES[0])
    pieces = items[0].find_elements(By.CSS_SELECTOR, ".pieces .piece")
    assert [p.get_attribute("textContent") for p in pieces] == served["tokens"]
    assert [float(p.get_attribute("data-prob")) for p in pieces] == pytest.approx(
        [2.718281828459045 ** s for s in served["token_scores"]], abs=1e-3)
    assert "p = " in pieces[0].get_attribute("title")
    browser.save_screenshot(str(shots / "output.png"))


def test_heatmap_and_beam_tree_match_the_api(browser, server: ServerProcess, shots: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    translate_on_page(browser, LINES, beam=5)
    inside = one(server, text=LINES[0], attention=True, alignments=True, trace=True, beam=5)
    att, trace = inside["attention"], inside["trace"]
    cells = browser.find_elements(By.CSS_SELECTOR, "#heatmap rect.cell")
    assert len(cells) == len(att["source"]) * len(att["target"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heatmap .row")) == len(att["target"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#layer option")) == 1 + 1  # a layer and their mean
    assert len(browser.find_elements(By.CSS_SELECTOR, "#head option")) == 2 + 1  # two heads and their mean
    row = browser.find_elements(By.CSS_SELECTOR, "#heatmap .row")[0]
    ActionChains(browser).move_to_element(row.find_element(By.CSS_SELECTOR, "rect.cell")).perform()
    assert browser.find_elements(By.CSS_SELECTOR, "#heatmap .src-label.active")
    links = browser.find_elements(By.CSS_SELECTOR, "#links line.link")
    assert len(links) == len(inside["alignment"])
    assert browser.find_element(By.ID, "pharaoh").text == " ".join(f"{s}-{t}" for s, t in inside["alignment"])
    browser.save_screenshot(str(shots / "attention.png"))

    browser.find_element(By.ID, "tab-tree").click()
    nodes = browser.find_elements(By.CSS_SELECTOR, "#tree g.node")
    assert len(nodes) == 1 + sum(len(step) for step in trace["steps"])  # the start, then every candidate
    best = browser.find_elements(By.CSS_SELECTOR, "#tree g.node.best:not(.root)")
    assert [(int(n.get_attribute("data-step")), int(n.get_attribute("data-index"))) for n in best] \
        == list(enumerate(trace["best"]))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tree g.node.finished")) == \
        sum(x["finished"] for step in trace["steps"] for x in step)
    first = browser.find_element(By.CSS_SELECTOR, "#finished tr.best")
    assert first.find_elements(By.TAG_NAME, "td")[-1].text.replace("−", "-") == f"{trace['score']:.3f}"
    browser.save_screenshot(str(shots / "tree.png"))
    browser.find_element(By.ID, "tab-attention").click()


def test_n_best_errors_and_xss(browser, server: ServerProcess, shots: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    items = translate_on_page(browser, [LINES[0], XSS], n_best=3, beam=4)
    assert len(items[0].find_elements(By.CSS_SELECTOR, "ol.nbest > li")) == 3
    assert items[1].find_element(By.CLASS_NAME, "source").text == XSS  # shown as text
    assert not browser.find_elements(By.CSS_SELECTOR, "#output img, #inside-panel img")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - no dialog opened
    browser.find_element(By.ID, "beam").clear()
    browser.find_element(By.ID, "beam").send_keys("99")
    browser.find_element(By.ID, "translate").click()
    error = wait_for(browser, lambda d: d.find_element(By.ID, "error").text or False, "the error")
    assert "422" in error and "beam 99" in error
    browser.save_screenshot(str(shots / "error.png"))


def test_phone_width_and_no_other_origin(browser, server: ServerProcess, shots: Path) -> None:
    browser.get_log("performance"), browser.get_log("browser")  # what came before
    browser.set_window_size(390, 844)
    try:
        open_page(browser, server)
        translate_on_page(browser, LINES)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
        browser.save_screenshot(str(shots / "phone.png"))
    finally:
        browser.set_window_size(1280, 800)
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert any(u.endswith("/translate") for u in urls) and any(u.endswith("/static/page.js") for u in urls)
    foreign = [u for u in urls if not u.startswith(server.url + "/") and not u.startswith("data:")]
    assert not foreign, foreign
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no script error, no request the policy refused


def test_serve_load_benchmark_with_the_trace_on(tiny_run: Path, tmp_path: Path) -> None:
    from test_benchmarks import bench

    (tmp_path / "in.txt").write_text("\n".join(LINES * 2) + "\n", encoding="utf-8")
    doc = bench("serve_load.py", str(tiny_run), "--input", str(tmp_path / "in.txt"), "--requests", "4",
                "--concurrency", "2", "--beam", "2", "--trace", device=False)
    assert doc["trace"] is True and doc["decoding"].endswith("beam 2")
    assert doc["mt_translate"]["in_process_output_equals_cli"]
    r = doc["serve"][0]
    assert r["requests"] == 4 and r["errors"] == 0 and r["equal_to_mt_translate"] == 4, r
