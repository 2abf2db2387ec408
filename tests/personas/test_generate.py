import itertools
import re

import pytest

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.errors import BackendError
from aloekit.personas import GenerationConfig, PersonaPool, generate_personas, parse_candidates
from aloekit.store import Store
from tests.helpers import BagOfWordsEmbedder, ScriptedClient

_counter = itertools.count()


def fresh_people(n: int) -> str:
    """A numbered list of n texts that share no words with anything else."""
    lines = []
    for i in range(n):
        k = next(_counter)
        lines.append(f"{i + 1}. " + " ".join(f"w{k}x{j}" for j in range(9)) + ".")
    return "Here are some new profiles:\n" + "\n".join(lines)


@pytest.fixture
def setup(tmp_path, scripted):
    def make(respond, failures=()):
        inner = ScriptedClient(lambda messages, options: respond(messages), failures=failures)
        spec = scripted(f"gen{id(inner)}", inner)
        backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}))
        return inner, backends.client(spec, role="persona_generator")

    return PersonaPool(Store(tmp_path / "aloe.db")), make


async def test_generation_reaches_the_target_from_the_shipped_seeds(setup):
    pool, make = setup
    inner, client = make(lambda messages: fresh_people(4))
    config = GenerationConfig(kind="profile", target=30, candidates_per_round=4)
    report = await generate_personas(pool, client, BagOfWordsEmbedder(), config)
    assert (report.start_size, report.final_size, report.stop_reason) == (20, 30, "target reached")
    assert [r.accepted for r in report.rounds] == [4, 4, 2]  # the last round is trimmed to the target
    assert pool.count("profile") == 30
    generated = [p for p in pool.list("profile") if p.source == "generated"]
    assert len(generated) == 10
    # Each prompt is built fresh from 5 pool examples, never from the previous reply.
    pooled = {p.text for p in pool.list("profile")}
    for messages, _ in inner.calls:
        prompt = messages[0]["content"]
        examples = re.findall(r"^\d+\. (.*)$", prompt, flags=re.M)
        assert len(examples) == 5 and set(examples) <= pooled
        assert "Write 4 new ones" in prompt and "Here are some new profiles" not in prompt


@pytest.mark.parametrize("uses_cpu_thread", [True, False], ids=["local", "http"])
async def test_embeddings_are_made_off_the_event_loop(setup, uses_cpu_thread):
    """A local embedder encodes on the CPU thread (aloekit.cpu_thread), where a local generator runs too; any
    other (an HTTP one) in a worker thread, so that it does not hold the CPU thread."""
    import threading

    from aloekit.cpu_thread import on_cpu_thread

    threads = []

    class Recording(BagOfWordsEmbedder):
        def embed(self, texts):
            threads.append((on_cpu_thread(), threading.current_thread() is threading.main_thread()))
            return super().embed(texts)

    embedder = Recording()
    embedder.uses_cpu_thread = uses_cpu_thread
    pool, make = setup
    _, client = make(lambda messages: fresh_people(4))
    await generate_personas(pool, client, embedder, GenerationConfig(kind="profile", target=24))
    assert len(threads) >= 2 and set(threads) == {(uses_cpu_thread, False)}  # the pool's, then each round's


async def test_generation_stops_on_saturation(setup):
    pool, make = setup
    pool.ensure_seeds("personality")
    seeds = [p.text for p in pool.list("personality")]
    # The generator only paraphrases the pool: every candidate is too similar, so rounds add nothing.
    _, client = make(lambda messages: "\n".join(f"- {text} Indeed." for text in seeds[:3]))
    config = GenerationConfig(kind="personality", target=50, saturation_rounds=3, saturation_min_new=1)
    report = await generate_personas(pool, client, BagOfWordsEmbedder(), config)
    assert len(report.rounds) == 3 and report.stop_reason.startswith("saturated")
    assert report.final_size == 20 and report.acceptance_rate == 0


async def test_generation_resumes_from_the_stored_pool(setup):
    pool, make = setup
    embedder = BagOfWordsEmbedder()
    config = GenerationConfig(kind="profile", target=30, candidates_per_round=5)
    # First run: one good round, then the backend fails (not retried: max_retries=0).
    calls = {"n": 0}

    def respond(messages):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("backend down")
        return fresh_people(5)

    _, flaky = make(respond)
    with pytest.raises(BackendError, match="backend down"):
        await generate_personas(pool, flaky, embedder, config)
    assert pool.count("profile") == 25  # the finished round was saved
    embedded_before = sum(len(c) for c in embedder.calls)
    _, healthy = make(lambda messages: fresh_people(5))
    report = await generate_personas(pool, healthy, embedder, config)
    assert (report.start_size, report.final_size) == (25, 30)
    # Stored embeddings are reused: the resumed run embeds only its new candidates.
    assert sum(len(c) for c in embedder.calls) - embedded_before == 5


async def test_max_rounds(setup):
    pool, make = setup
    _, client = make(lambda messages: "nothing useful")
    report = await generate_personas(
        pool,
        client,
        BagOfWordsEmbedder(),
        GenerationConfig(kind="profile", target=99, max_rounds=2, saturation_rounds=5),
    )
    assert report.stop_reason == "max rounds (2) reached" and len(report.rounds) == 2


def test_parse_candidates_from_messy_output():
    text = """Sure! Here are 4 new profiles:

1. "She is a 30-year-old nurse who lives in Leeds with two cats."
2) **Profile 2:** He is a 41-year-old welder who
   restores boats and sings in a choir.
- Personality: She is calm, patient and kind to everyone she meets.
* He is a 22-year-old student who loves chess and hiking trips.
3. He is a 22-year-old student who loves chess and hiking trips.
4. Too short.
"""
    assert parse_candidates(text) == [
        "She is a 30-year-old nurse who lives in Leeds with two cats.",
        "He is a 41-year-old welder who restores boats and sings in a choir.",
        "She is calm, patient and kind to everyone she meets.",
        "He is a 22-year-old student who loves chess and hiking trips.",
    ]


def test_parse_candidates_json_and_plain_lines():
    assert parse_candidates(
        '["She is a baker who loves jazz and long walks.", {"text": "He is a pilot who collects old stamps."}]'
    ) == [
        "She is a baker who loves jazz and long walks.",
        "He is a pilot who collects old stamps.",
    ]
    assert parse_candidates(
        "She is a baker who loves jazz and long walks.\n\nHe is a pilot who collects old stamps."
    ) == [
        "She is a baker who loves jazz and long walks.",
        "He is a pilot who collects old stamps.",
    ]
