"""Regenerate the README's viewer screenshots: one tree page and one evaluation page, in headless Chromium.

``.venv/bin/python docs/screenshots.py [--out docs/screenshots]`` (or ``make screenshots``). No download and
no model: a stub OpenAI-compatible server answers every role from its prompt, deterministically, so a rerun
draws the same pictures. Needs Debian's chromium and chromium-driver (``make browser-deps``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import shutil
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.evaluation import EvalConfig, create_eval_conversations, run_evaluation
from aloekit.evaluation.task import eval_persona_ids
from aloekit.graphs import SimulationConfig, TreeStore, run_conversations
from aloekit.personas import PersonaPool
from aloekit.store import Store
from aloekit.testing import StubOpenAIServer
from aloekit.viewer import build_server

OUT = Path(__file__).resolve().parent / "screenshots"
SEED = 0
# Run ids are normally a timestamp and a random suffix; fixed ones keep the pictures identical between reruns.
SIM_RUN, EVAL_RUN = "20250614-101500-a1b2c3", "20250614-103000-d4e5f6"
# The port is part of every backend spec the pages show, so the stub asks for this one first.
STUB_PORT = 8401
WINDOW = (1280, 1000)  # the browser tests' width: the page's 1200 px column, no empty margin
MAX_BYTES = 400_000
WAIT_S = 30

_WORD = re.compile(r"[a-z][a-z'-]{3,}")
_STOP = frozenset("that this with from they their there what have been were about your just when will into "
                  "than them then also some more very like over each".split())  # fmt: skip


# The stub's answers ----------------------------------------------------------------------------------


def _persona(system: str) -> tuple[str, str]:
    """The profile and personality a role prompt was filled in with ("" when it has none)."""
    profile = re.search(r"^Profile: (.*)$", system, re.M)
    personality = re.search(r"^Personalit(?:y|ies): (.*)$", system, re.M)
    return (profile.group(1) if profile else "", personality.group(1) if personality else "")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]


def _unconjugate(verb: str) -> str:
    """``keeps`` -> ``keep``, ``teaches`` -> ``teach``, ``has`` -> ``have``: third person to first."""
    irregular = {"has": "have", "does": "do", "goes": "go", "is": "am"}
    if verb in irregular:
        return irregular[verb]
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if re.search(r"(ch|sh|ss|x)es$", verb):
        return verb[:-2]
    return verb[:-1] if verb.endswith("s") and not verb.endswith("ss") else verb


def first_person(sentence: str) -> str:
    """A persona sentence ("She keeps three greyhounds and swims daily.") as the person would say it."""
    match = re.match(r"(?:She|He|They) (\w+)(.*)", sentence.rstrip("."))
    if not match:
        return sentence.rstrip(".")
    verb, rest = match.groups()
    rest = re.sub(r"\b(?:her|his|their)\b", "my", rest)
    rest = re.sub(r"\b(?:herself|himself|themselves)\b", "myself", rest)
    rest = re.sub(r"\bhim\b", "me", rest)
    if verb.endswith("s") and verb != "was":  # a second verb in the same tense: "... and enters them in shows"
        rest = re.sub(r"\band (\w+s)\b", lambda m: "and " + _unconjugate(m.group(1)), rest)
        rest = rest.replace("and am ", "and I'm ")
        return ("I'm" if verb == "is" else f"I {_unconjugate(verb)}") + rest
    return f"I {verb}{rest}"


def second_person(text: str) -> str:
    """What the user said about themselves, said back to them."""
    swaps = {"I'm": "you're", "I": "you", "my": "your", "myself": "yourself", "me": "you", "am": "are"}
    return re.sub(r"\b(I'm|I|my|myself|me|am)\b", lambda m: swaps[m.group(1)], text)


def _facts(profile: str) -> list[str]:
    """The profile's sentences after the first, each one thing the person might mention."""
    return _sentences(profile)[1:] or _sentences(profile)


def _traits(personality: str) -> list[str]:
    """Trait words, in order: "They are cheerful and talkative, ..." gives cheerful, talkative."""
    return [w for pair in re.findall(r"\b(?:is|are) ([a-z-]+)(?: and ([a-z-]+))?", personality) for w in pair if w]


def _overlap(text: str, profile: str) -> int:
    """How many of the profile's content words a message uses: the stub judge's idea of tailoring."""
    words = {w for w in _WORD.findall(profile.lower()) if w not in _STOP}
    return len(words & {w for w in _WORD.findall(text.lower())})


def _said(message: str) -> str:
    """The fact a user message mentions ("I keep three greyhounds"), up to its first comma."""
    match = re.search(r"\b(I(?:'m| )[^.!?,]*)", message)
    return match.group(1) if match else ""


def _clause(fact: str) -> str:
    """A fact's first clause, for a passing mention ("you keep three rescued greyhounds")."""
    return re.split(r" and | but | who | where ", fact)[0]


# Traits whose user writes with exclamation marks and livelier openers.
LIVELY = frozenset("cheerful talkative warm playful enthusiastic optimistic sociable energetic impulsive bubbly "
                   "adventurous charming confident spirited outspoken dramatic spontaneous bold".split())  # fmt: skip
LIVELY_OPENERS = ("Omg okay, so", "Ha, funny you ask,", "Guess what,", "Big week!", "Okay, fun fact:")
CALM_OPENERS = ("Not much here.", "Quiet week.", "Well,", "Hm, let me think.", "Nothing exciting, but")


def user_message(system: str, turn: int) -> str:
    """The simulated user's message of ``turn``: one fact from the persona, in the personality's voice."""
    profile, personality = _persona(system)
    # Where to start in the profile and which openers to use, from the personality: the eval set pairs each
    # profile with several personalities, and their chats should not read alike.
    facts, key = _facts(profile), zlib.crc32(personality.encode())
    start = zlib.crc32(f"first fact: {personality}".encode())
    fact = first_person(facts[(start + turn - 1) % len(facts)]) if facts else "I had a quiet day"
    lively = bool(LIVELY & set(_traits(personality)[:2]))
    openers = LIVELY_OPENERS if lively else CALM_OPENERS
    text = f"{openers[(key + turn) % len(openers)]} {fact}{'!' if lively else '.'}"
    return text + (" How about you?" if turn == 1 else "")


def inducer_report(system: str, chat: str) -> str:
    """What the user has said so far, conservatively: nothing after one message, then the facts mentioned."""
    profile, personality = _persona(system)
    said = [line.removeprefix("User: ") for line in chat.splitlines() if line.startswith("User: ")]
    if len(said) <= 1:
        return "None"
    facts = [f for f in _facts(profile) if any(first_person(f) in line for line in said)]
    traits = _traits(personality)[: len(said) - 1]
    lines = [f"Profile: {' '.join(facts)}"] if facts else []
    return "\n".join(lines + ([f"Personalities: {', '.join(traits)}"] if traits else [])) or "None"


def reply(system: str, transcript: list[dict[str, Any]]) -> str:
    """A responder's reply (also the evaluated model's): it recalls more of what the user said as the chat goes on,
    and, given the inducer's hint, all of it plus the traits the hint names."""
    said = [second_person(s) for m in transcript if m.get("role") == "user" and (s := _said(str(m["content"])))]
    latest = said[-1] if said else "you had a quiet day"
    hint = system.partition("revealed about themselves so far:\n")[2].partition("\nTailor")[0]
    if hint:
        profile, traits = _persona(hint)
        earlier = [f for f in (second_person(first_person(s)) for s in _sentences(profile)) if f != latest]
        recall = f" You also mentioned that {' and that '.join(earlier[-2:])}." if earlier else ""
        trait = f" You sound so {traits.split(', ')[-1]}!" if traits else ""
        return f"Oh wow, {latest}?{recall}{trait} How are you finding it all?"
    if len(said) <= 1:
        return f"Nice to hear from you! So {latest}? How is that going?"
    recall = " and that ".join(_clause(s) for s in said[:-1][-2:])
    return f"Right, {latest}? And you said earlier that {recall}. What is next for you?"


def judge_choice(system: str, prompt: str) -> str:
    """The preference judge: the candidate that uses most of the persona (ties: the first shown, as real judges
    often do, so identical candidates show a disagreement between the two orders)."""
    persona = " ".join(_persona(system))
    shown = re.findall(r"Message (\w+):\n(.*?)(?=\n\nMessage \w+:|\n\nWhich message)", prompt, re.S)
    best = max(shown, key=lambda item: _overlap(item[1], persona), default=("1", ""))
    return f"Message {best[0]}"


def score(system: str, prompt: str) -> str:
    """The evaluation's scorer: 1-5, rising with how much of the profile the reply picks up."""
    profile, personality = _persona(system)
    answer = prompt.partition("The reply:\n")[2].rpartition("\n\nScore")[0]
    jitter = zlib.crc32(f"{personality} {answer}".encode()) % 3 - 1  # persona-to-persona spread, for a CI band
    return f"Score: {max(1, min(5, 1 + _overlap(answer, profile) // 3 + jitter))}"


def respond(messages: list[dict[str, Any]]) -> str:
    """Answer any built-in ALOE role from its prompt, like a small, consistent model would."""
    system = str(messages[0].get("content", "")) if messages else ""
    last = str(messages[-1].get("content", "")) if messages else ""
    if "Candidate replies:" in last:
        return judge_choice(system, last)
    if last.rstrip().endswith("Score (1-5):"):
        return score(system, last)
    if last.startswith("The chat so far:"):
        return inducer_report(system, last)
    if system.startswith("You are playing a real person"):
        return user_message(system, sum(m.get("role") == "assistant" for m in messages) + 1)
    return reply(system, [m for m in messages if m.get("role") != "system"])


class PinnedStub(StubOpenAIServer):
    """The stub on :data:`STUB_PORT` when it is free (else any port: the pages then show another one)."""

    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        except OSError:
            print(f"note: port {port} is taken, so the backend specs on the pages will differ", file=sys.stderr)
            return
        self._httpd.server_close()
        self._httpd = httpd
        self._httpd.daemon_threads = True


# The database -----------------------------------------------------------------------------------------


def _start_run(store: Store, run_id: str, command: str, config: dict[str, Any], seed: int) -> str:
    """Record a run under a fixed id (the row is new and nothing refers to it yet, so renaming it is safe)."""
    store.update("runs", store.start_run(command, config, seed), {"id": run_id})
    return run_id


async def _simulate(store: Store, config: SimulationConfig, run_id: str) -> dict[str, int]:
    backends = BackendPool(AloeConfig(), store=store, run_id=run_id)
    try:
        return (await run_conversations(TreeStore(store), backends, config, run_id)).statuses
    finally:
        await backends.aclose()


async def _evaluate(store: Store, config: EvalConfig, run_id: str) -> dict[str, int]:
    backends = BackendPool(AloeConfig(), store=store, run_id=run_id)
    try:
        return (await run_evaluation(store, backends, config, run_id)).statuses
    finally:
        await backends.aclose()


def build_database(db: Path, base_url: str) -> tuple[str, str]:
    """A simulation run (2 conversations x 3 turns, judged in both orders) and an evaluation run (3 personas x
    4 turns) against the stub at ``base_url``; returns the tree to show and the evaluation run id."""

    def spec(model: str) -> str:
        return f"openai:{base_url}#{model}"

    def roles(specs: dict[str, str]) -> list[str]:
        return [arg for role, backend in specs.items() for arg in ("--role", f"{role}={backend}")]

    store = Store(db)
    pool = PersonaPool(store)
    for kind in ("profile", "personality"):
        pool.ensure_seeds(kind)
    sim = SimulationConfig(conversations=2, turns=3, judge_both_orders=True, seed=SEED)
    sim_roles = {role: spec(f"stub-{role}") for role in ("user", "inducer", "judge")}
    sim_roles |= {responder.name: spec("stub-chat") for responder in sim.responders}
    for role, backend in sim_roles.items():
        sim = sim.with_backend(role, backend)
    # As `aloe simulate` samples: the eval set's personas stay out of simulations.
    personas = pool.sample_pairs(sim.conversations, seed=sim.seed, exclude=eval_persona_ids(sim.eval_set))
    command = shlex.join(["aloe", "simulate", "--conversations", "2", "--turns", "3", "--judge-both-orders",
                          "--seed", str(SEED), *roles(sim_roles)])  # fmt: skip
    _start_run(store, SIM_RUN, command, {"simulation_resolved": sim.model_dump(mode="json")}, sim.seed)
    TreeStore(store).create_conversations(SIM_RUN, personas, sim.turns)
    statuses = asyncio.run(_simulate(store, sim, SIM_RUN))
    store.finish_run(SIM_RUN)

    ev = EvalConfig(model=spec("stub-chat"), personas=3, turns=4, seed=SEED)
    eval_roles = {"user": spec("stub-user"), "judge": spec("stub-judge")}
    for role, backend in eval_roles.items():
        ev = ev.with_backend(role, backend)
    command = shlex.join(["aloe", "eval", "--model", ev.model, "--personas", "3", "--turns", "4", "--seed", str(SEED),
                          *roles(eval_roles)])  # fmt: skip
    _start_run(store, EVAL_RUN, command, {"eval_resolved": ev.model_dump(mode="json")}, ev.seed)
    create_eval_conversations(store, EVAL_RUN, ev)
    eval_statuses = asyncio.run(_evaluate(store, ev, EVAL_RUN))
    store.finish_run(EVAL_RUN)
    store.close()
    for name, got in (("simulation", statuses), ("evaluation", eval_statuses)):
        if set(got) != {"complete"}:
            raise SystemExit(f"error: the {name} run did not complete: {got}")
    return f"{SIM_RUN}-0000", EVAL_RUN


# The browser ------------------------------------------------------------------------------------------


@contextmanager
def viewer(db: Path) -> Iterator[str]:
    """The viewer on a free loopback port, serving from a thread; yields its base URL."""
    server = build_server(db, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def browser(profile_dir: Path) -> Iterator[Any]:
    """Headless Chromium at :data:`WINDOW`, through Debian's chromedriver (the same flags as the browser tests)."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={profile_dir}"):  # fmt: skip
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))
    except WebDriverException as exc:  # e.g. chromium and chromedriver of different versions
        reason = (exc.msg or str(exc)).strip().splitlines()[0]
        raise SystemExit(f"error: chromedriver could not start chromium: {reason}") from None
    driver.set_page_load_timeout(WAIT_S)
    # --window-size sizes the window, and headless Chromium still keeps some of it for browser chrome: this
    # makes the page itself exactly WINDOW, so the pictures have that size.
    metrics = {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        yield driver
    finally:
        driver.quit()


def shoot_tree(driver: Any, url: str, path: Path) -> None:
    """The tree page with every node collapsed (the page's own ``c`` key) but the second turn's user node, the
    first turn with a hint: its verdict in words, the agreement of both orders, and the hint badge below."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.turn")) == 3)
    driver.find_element(By.TAG_NAME, "body").send_keys("c")
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "details.node[open]"))
    user = driver.find_element(By.CSS_SELECTOR, 'li.turn[data-turn="2"] details.node.user')
    user.find_element(By.TAG_NAME, "summary").click()
    wait.until(lambda d: user.get_attribute("open") == "true")
    _save(driver, path)


def shoot_eval(driver: Any, url: str, path: Path) -> None:
    """The top of the evaluation page: the AL(k) curve with its CI band, the metrics and the AL(k) table."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#al-curve circle")) == 4)
    _save(driver, path)


def _save(driver: Any, path: Path) -> None:
    """Screenshot the viewport from the top of the page (a click may have scrolled it)."""
    driver.execute_script("window.scrollTo(0, 0)")
    if not driver.save_screenshot(str(path)):
        raise SystemExit(f"error: chromium could not take the screenshot {path}")


def main(argv: list[str] | None = None) -> None:
    """Build the demo database, serve it, and write ``tree.png`` and ``eval.png`` to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs (default: {OUT})")
    args = parser.parse_args(argv)
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        sys.exit(f"error: {' and '.join(missing)} not found: run `make browser-deps` (Debian's chromium and "
                 "chromium-driver, needs root)")  # fmt: skip
    try:
        import selenium  # noqa: F401
    except ImportError:
        sys.exit("error: selenium is not installed: run `make install` (it comes with the dev extras)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aloe-screenshots-") as tmp:
        db = Path(tmp) / "aloe.db"
        with PinnedStub(STUB_PORT, respond=respond) as stub:
            tree_id, eval_run = build_database(db, stub.base_url)
        with viewer(db) as base, browser(Path(tmp) / "chromium") as driver:
            shots = {"tree.png": (shoot_tree, f"{base}/trees/{tree_id}"),
                     "eval.png": (shoot_eval, f"{base}/evals/{eval_run}")}  # fmt: skip
            for name, (shoot, url) in shots.items():
                shoot(driver, url, args.out / name)
    for name in shots:
        size = (args.out / name).stat().st_size
        print(f"{args.out / name}: {size // 1000} KB")
        if size > MAX_BYTES:
            sys.exit(f"error: {args.out / name} is {size // 1000} KB, over the {MAX_BYTES // 1000} KB limit")


if __name__ == "__main__":
    main()
