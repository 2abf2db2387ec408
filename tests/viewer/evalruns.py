"""Small evaluation runs made with scripted backends, shared by the viewer, ``aloe trees`` and report tests."""

from __future__ import annotations

import asyncio
import zlib

from aloekit.agents.backends import BackendPool
from aloekit.config import AloeConfig
from aloekit.evaluation import EvalConfig, create_eval_conversations, run_evaluation
from aloekit.store import Store
from tests.helpers import ScriptedClient

# Text Graphviz, Mermaid and HTML each treat specially: quotes, a backslash (also last), a would-be \N escape,
# markup, entity codes and non-ASCII punctuation.
TRICKY_USER = 'She said \u201chi\u201d \u2014 it\u2019s "quoted", C:\\Node & <b>bold</b> #quot; end\\'
TRICKY_REPLY = "Caf\u00e9 \u2019ok\u2019 \\l\nsecond line `code` 100%"


def judge_score(messages: list[dict[str, str]], options: object) -> str:
    """A 1-5 score that varies with the prompt (so intervals are not degenerate); some answers are unusable."""
    value = zlib.crc32("".join(m["content"] for m in messages).encode())  # the persona is in the system prompt
    return "I cannot say." if value % 11 == 0 else f"Score: {1 + value % 5}"


IMPROVED = " (improved)"


def judge(messages: list[dict[str, str]], options: object) -> str:
    """:func:`judge_score` of the reply without its ``IMPROVED`` marks, plus one per mark (at most 5)."""
    marks = messages[-1]["content"].count(IMPROVED)
    answer = judge_score([{**m, "content": m["content"].replace(IMPROVED, "")} for m in messages], options)
    return f"Score: {min(5, int(answer.split()[-1]) + marks)}" if marks and answer.startswith("Score: ") else answer


def eval_run(
    store: Store,
    tag: str,
    personas: int = 6,
    turns: int = 3,
    seed: int = 0,
    user_text: str = "hello there",
    reply_text: str = "a friendly reply",
    bias: int = 0,
) -> str:
    """Run a live evaluation over scripted user, model and judge; returns its run id."""
    from tests.conftest import SCRIPTED_CLIENTS

    def scripted(role: str, client: ScriptedClient) -> str:
        SCRIPTED_CLIENTS[f"{tag}-{role}"] = client
        return f"scripted:{tag}-{role}"

    better = IMPROVED * bias  # a second "model" whose replies the one judge scores a little higher
    model = scripted(
        "model", ScriptedClient(lambda m, o: f"{reply_text}{better} {sum(x['role'] == 'user' for x in m)}")
    )
    user = scripted("user", ScriptedClient(lambda m, o: user_text))
    config = EvalConfig(model=model, personas=personas, turns=turns, seed=seed)
    SCRIPTED_CLIENTS["eval-runs-judge"] = ScriptedClient(judge)  # every run scored by the same judge
    config = config.with_backend("judge", "scripted:eval-runs-judge").with_backend("user", user)
    run_id = store.start_run("aloe eval", {"eval_resolved": config.model_dump(mode="json")}, seed)
    create_eval_conversations(store, run_id, config)
    backends = BackendPool(AloeConfig.model_validate({"backend": {"max_retries": 0}}), store=store)
    asyncio.run(run_evaluation(store, backends, config, run_id))
    store.finish_run(run_id)
    return run_id
