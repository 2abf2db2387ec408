"""The viewer in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)."""

from __future__ import annotations

import re
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.errors import AloeError
from aloekit.evaluation import EvalConfig, create_eval_conversations, run_evaluation
from aloekit.graphs import TreeStore, run_conversations
from aloekit.personas import Persona, PersonaPair, PersonaPool
from aloekit.store import Store
from aloekit.viewer import build_server, tree_page
from tests.conftest import REPO
from tests.graphs.scripted import scripted_setup
from tests.helpers import ScriptedClient
from tests.training.records import record

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (make test installs them)"
)
ARTIFACTS = REPO / "test-artifacts"
PAYLOADS = ['<script>window.__pwned=1;alert(1)</script>', '<img src=x onerror="window.__pwned=2">',
            '"><svg onload="window.__pwned=3">']  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A database with a simulation run, an evaluation run and a conversation full of HTML payloads."""
    import asyncio

    from tests.conftest import SCRIPTED_CLIENTS

    def scripted(name, client):
        SCRIPTED_CLIENTS[name] = client
        return f"scripted:{name}"

    db = tmp_path_factory.mktemp("viewer") / "aloe.db"
    store = Store(db)
    pool = PersonaPool(store)
    pool.ensure_seeds("profile")
    pool.ensure_seeds("personality")
    config, backends, _ = scripted_setup(scripted, turns=3, judge_both_orders=True)
    sim_run = store.start_run("aloe simulate", {"simulation_resolved": config.model_dump(mode="json")}, 0)
    TreeStore(store).create_conversations(sim_run, pool.sample_pairs(2, seed=0), 3)
    asyncio.run(run_conversations(TreeStore(store), backends, config, sim_run))

    model = scripted("viewer-model", ScriptedClient(lambda m, o: "a friendly reply"))
    judge = scripted("viewer-judge", ScriptedClient(lambda m, o: "Score: 4"))
    user = scripted("viewer-user", ScriptedClient(lambda m, o: "hello there"))
    eval_config = EvalConfig(model=model, personas=2, turns=3).with_backend("judge", judge).with_backend("user", user)
    eval_run = store.start_run("aloe eval", {"eval_resolved": eval_config.model_dump(mode="json")}, 0)
    create_eval_conversations(store, eval_run, eval_config)
    asyncio.run(run_evaluation(store, BackendPool(AloeConfig(), store=store), eval_config, eval_run))

    evil = PersonaPair(profile=Persona.new("profile", "Profile " + PAYLOADS[0]),
                       personality=Persona.new("personality", "Personality " + PAYLOADS[1]))  # fmt: skip
    evil_run = store.start_run("aloe simulate " + PAYLOADS[2], {}, 0)
    [evil_id] = TreeStore(store).create_conversations(evil_run, [evil], 1)
    TreeStore(store).save_turn(record(evil_id, 1, PAYLOADS[0], [PAYLOADS[1], PAYLOADS[2]], preferred=0, continued=1),
                               complete=True)  # fmt: skip
    store.finish_run(evil_run, "failed", error=f"stopped: {PAYLOADS[1]}\nsecond line of the reason")
    return {"db": db, "sim_run": sim_run, "eval_run": eval_run, "evil_run": evil_run, "evil_id": evil_id}


@pytest.fixture(scope="module")
def base_url(data):
    server = build_server(data["db"], "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def _bg(element) -> str:
    return element.value_of_css_property("background-color")


def test_runs_tree_expand_colours_and_continued_path(browser, base_url, data):
    from selenium.webdriver.common.by import By

    browser.get(base_url + "/")
    assert "Runs" in browser.find_element(By.TAG_NAME, "h1").text
    browser.find_element(By.LINK_TEXT, data["sim_run"]).click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#conversations tr")[1:]
    # Judge flip rate (both orders were asked): the scripted judge flips on turn 1 only, where no reply is tailored.
    assert len(rows) == 2 and rows[0].text.endswith("33%")
    browser.find_element(By.PARTIAL_LINK_TEXT, f"{data['sim_run']}-0000").click()
    turns = browser.find_elements(By.CSS_SELECTOR, "li.turn")
    assert len(turns) == 3
    candidate = turns[1].find_element(By.CSS_SELECTOR, "details.node.preferred")
    assert candidate.get_attribute("open") is None
    candidate.find_element(By.TAG_NAME, "summary").click()
    assert candidate.get_attribute("open") == "true"
    assert "tailored reply to user message 2" in candidate.find_element(By.CSS_SELECTOR, ".full").text
    assert _bg(browser.find_element(By.CSS_SELECTOR, "details.node.user")) == "rgba(219, 232, 251, 1)"
    assert _bg(candidate) == "rgba(214, 245, 210, 1)"
    assert _bg(turns[1].find_element(By.CSS_SELECTOR, "details.node.rejected")) == "rgba(249, 214, 214, 1)"
    continued = browser.find_elements(By.CSS_SELECTOR, "details.continued")
    assert len(continued) == 3 and all(c.value_of_css_property("border-top-width") == "3px" for c in continued)
    browser.save_screenshot(str(ARTIFACTS / "viewer_tree.png"))


def test_keyboard_moves_between_turns(browser, base_url, data):
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/trees/{data['sim_run']}-0001")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("j")
    assert browser.switch_to.active_element.get_attribute("data-turn") == "1"
    body.send_keys("jj")
    assert browser.switch_to.active_element.get_attribute("data-turn") == "3"
    browser.switch_to.active_element.send_keys("k")
    assert browser.switch_to.active_element.get_attribute("data-turn") == "2"
    browser.switch_to.active_element.send_keys("e")
    assert all(d.get_attribute("open") for d in browser.find_elements(By.CSS_SELECTOR, "details.node"))


def test_eval_run_shows_the_plot_metrics_and_transcripts(browser, base_url, data):
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/runs/{data['eval_run']}")
    browser.find_element(By.ID, "eval-link").click()
    svg = browser.find_element(By.ID, "al-curve")
    assert svg.is_displayed() and len(svg.find_elements(By.TAG_NAME, "circle")) == 3
    assert "4.000" in browser.find_element(By.ID, "metrics").text
    transcripts = browser.find_elements(By.CSS_SELECTOR, "details.transcript")
    assert len(transcripts) == 2
    transcripts[0].find_element(By.TAG_NAME, "summary").click()
    assert "a friendly reply" in transcripts[0].text
    browser.save_screenshot(str(ARTIFACTS / "viewer_eval.png"))


def test_verdict_words_hint_badge_and_prompt_line_breaks(browser, base_url, data):
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/trees/{data['sim_run']}-0000")
    turn = browser.find_elements(By.CSS_SELECTOR, "li.turn")[1]
    user = turn.find_element(By.CSS_SELECTOR, "details.node.user")
    names, values = (user.find_elements(By.CSS_SELECTOR, f":scope > dl > {tag}") for tag in ("dt", "dd"))
    facts = {name.text: value.text for name, value in zip(names, values, strict=True)}
    # The scripted judge picks the tailored (hinted) reply, wherever it was shown, and both orders agree.
    assert re.fullmatch(r"preferred: the hinted reply, shown (first|second)", facts["judge verdict"])
    assert facts["judge agreement"] == "agreed in both orders"
    hinted = turn.find_element(By.CSS_SELECTOR, "details.node.preferred")
    badge = hinted.find_element(By.CSS_SELECTOR, "summary .badge.hint")
    assert hinted.get_attribute("open") is None and badge.is_displayed() and badge.text == "hint"
    assert not turn.find_elements(By.CSS_SELECTOR, "details.node.rejected .badge.hint")
    raw = user.find_element(By.XPATH, "./details[summary='raw calls']")
    raw.find_element(By.TAG_NAME, "summary").click()
    prompt = raw.find_element(By.CSS_SELECTOR, ".msg .text")
    assert prompt.value_of_css_property("white-space") == "pre-wrap"
    assert "\n" in prompt.text and "\\n" not in prompt.text  # real line breaks, no JSON escapes
    browser.save_screenshot(str(ARTIFACTS / "viewer_verdict.png"))


def test_failed_run_reason_and_full_ids(browser, base_url, data):
    from selenium.webdriver.common.by import By

    for path in ("/", f"/runs/{data['evil_run']}"):
        browser.get(base_url + path)
        reason = next(e for e in browser.find_elements(By.CSS_SELECTOR, ".error") if "second line" in e.text)
        assert reason.is_displayed() and reason.text == f"stopped: {PAYLOADS[1]}\nsecond line of the reason"
        assert browser.execute_script("return window.__pwned === undefined")
    browser.get(base_url + "/")
    for run_id in (data["sim_run"], data["eval_run"], data["evil_run"]):
        link = browser.find_element(By.LINK_TEXT, run_id)  # the whole id, as the link's text
        cell = link.find_element(By.XPATH, "./..")
        assert cell.value_of_css_property("white-space") == "nowrap" and "\n" not in link.text


def test_payloads_render_as_text_and_run_nothing(browser, base_url, data):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    for path in ("/", f"/runs/{data['evil_run']}", f"/trees/{data['evil_id']}"):
        browser.get(base_url + path)
        browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        with pytest.raises(NoAlertPresentException):
            _ = browser.switch_to.alert
        assert browser.execute_script("return window.__pwned === undefined")
        text = browser.find_element(By.TAG_NAME, "body").text
        assert browser.find_elements(By.CSS_SELECTOR, "main img, main svg, main script") == []
        if path.startswith("/trees"):
            for payload in PAYLOADS:
                assert payload in text
        else:
            assert PAYLOADS[2] in text
    browser.save_screenshot(str(ARTIFACTS / "viewer_injection.png"))


def test_exported_html_works_from_file_without_network(browser, data, tmp_path):
    from selenium.webdriver.common.by import By

    rendered, _ = tree_page(Store(data["db"], readonly=True), f"{data['sim_run']}-0000", standalone=True)
    out = tmp_path / "tree.html"
    out.write_text(rendered, encoding="utf-8")
    browser.get(out.as_uri())
    assert len(browser.find_elements(By.CSS_SELECTOR, "li.turn")) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "details.continued")) == 3
    assert _bg(browser.find_element(By.CSS_SELECTOR, "details.node.preferred")) == "rgba(214, 245, 210, 1)"
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert "http" not in rendered.replace("http-equiv", "")  # no external references at all


def _request(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_read_only_404s_and_no_files(base_url, data):
    for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        assert _request(base_url + "/", method) == 405
    probes = (
        "/runs/nope",
        "/trees/nope",
        "/evals/nope",
        f"/evals/{data['sim_run']}",
        "/static/app.js",
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/trees/..%2f..%2fetc%2fpasswd",
        "/aloe.db",
    )
    for path in probes:
        assert _request(base_url + path) == 404, path
    assert _request(base_url + "/") == 200


def test_refuses_non_loopback_hosts_and_missing_databases(data, tmp_path):
    with pytest.raises(AloeError, match="not a loopback address"):
        build_server(data["db"], "0.0.0.0", 0)
    with pytest.raises(AloeError, match="no database at"):
        build_server(tmp_path / "none.db", "127.0.0.1", 0)
