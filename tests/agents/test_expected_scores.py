"""Probability-weighted (G-Eval) scores and constrained answers, on every kind of backend."""

from __future__ import annotations

import asyncio

import pytest

from aloekit.agents import RoleView
from aloekit.agents.backends import BackendPool, TransformersChatClient, from_dicts
from aloekit.agents.backends.local import choice_tokens
from aloekit.agents.backends.openai import translate_create_args
from aloekit.agents.scorer import AlignmentScorer
from aloekit.errors import BackendError
from aloekit.testing import StubOpenAIServer
from tests.graphs.scripted import PERSONA
from tests.helpers import ScriptedClient

VIEW = RoleView(conversation_id="c", turn=1, persona=PERSONA, user_message="hi", candidates=("yo",))


async def test_expected_score_from_a_scripted_distribution(scripted):
    client = ScriptedClient(lambda m, o: ("1", {"1": 0.5, "2": 0.1, "5": 0.4, "Score": 0.25}))
    scorer = AlignmentScorer("judge", BackendPool().client(scripted("dist", client)), score_mode="expected")
    out = await scorer(VIEW)
    # "Score" is not an option: the rest is renormalised, 0.5 + 0.1 + 0.4 = 1.
    assert out.value.score == pytest.approx(1 * 0.5 + 2 * 0.1 + 5 * 0.4)
    assert out.value.mode == "expected" and out.value.distribution["5"] == pytest.approx(0.4)
    assert out.calls[0].distribution == out.value.distribution and not out.value.retried
    assert out.value.option_share == pytest.approx(1.0) == out.calls[0].option_share  # "Score" is no option
    options = client.calls[0][1]
    assert options["guided_choice"] == ["1", "2", "3", "4", "5"] and options["logprobs"] and options["top_logprobs"]


async def test_an_answer_that_is_no_score_is_unscored_whatever_the_options_held(scripted):
    # The judge said "Sorry": its 0.001 on "5" once became a score of 5.0.
    client = ScriptedClient(lambda m, o: ("Sorry", {"Sorry": 0.999, "5": 0.001}))
    scorer = AlignmentScorer("judge", BackendPool().client(scripted("sorry", client)), score_mode="expected")
    out = await scorer(VIEW)
    assert out.value.score is None and out.value.retried and out.value.option_share is None


async def test_expected_score_without_logprobs_is_unscored(scripted):
    client = ScriptedClient(lambda m, o: "4")
    scorer = AlignmentScorer("judge", BackendPool().client(scripted("nolp", client)), score_mode="expected")
    out = await scorer(VIEW)
    assert out.value.score is None and out.value.retried and len(client.calls) == 2  # never read from the text


async def test_expected_score_from_a_server_returning_top_logprobs():
    with StubOpenAIServer(respond=lambda m: "4", distribution=lambda m: {"1": 0.2, "4": 0.5, " 5": 0.3}) as server:
        scorer = AlignmentScorer("judge", BackendPool().client(server.spec()), score_mode="expected")
        out = await scorer(VIEW)
        body = server.requests[-1]
    assert out.value.score == pytest.approx(0.2 * 1 + 0.5 * 4 + 0.3 * 5) and out.value.option_share == 1.0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["guided_choice"] == ["1", "2", "3", "4", "5"]  # vLLM's request field, top level of the body


async def test_guided_choice_reaches_an_openai_compatible_server_in_vllms_form():
    with StubOpenAIServer(respond=lambda m: "3") as server:
        scorer = AlignmentScorer("judge", BackendPool().client(server.spec()), guided_choice=True)
        out = await scorer(VIEW)
        body = server.requests[-1]
    assert out.value.score == 3.0 and body["guided_choice"] == ["1", "2", "3", "4", "5"]


def test_create_args_translation():
    args = {"guided_choice": ["A", "B"], "logprobs": True, "repetition_penalty": 1.1, "max_tokens": 1}
    server = translate_create_args(args, server=True, guided_choice="auto")
    assert server == {"logprobs": True, "max_tokens": 1,
                      "extra_body": {"guided_choice": ["A", "B"], "repetition_penalty": 1.1}}  # fmt: skip
    newer = translate_create_args({"guided_choice": ["A"]}, server=True, guided_choice="structured_outputs")
    assert newer == {"extra_body": {"structured_outputs": {"choice": ["A"]}}}
    # The OpenAI API rejects unknown fields: the answer is read from logprobs instead.
    assert translate_create_args({"guided_choice": ["A"], "logprobs": True}, server=False, guided_choice="auto") == {
        "logprobs": True
    }
    with pytest.raises(BackendError, match="repetition_penalty is not an OpenAI API option"):
        translate_create_args({"repetition_penalty": 1.2}, server=False, guided_choice="auto")


def _msgs(text):
    return from_dicts([{"role": "user", "content": text}])


async def test_in_process_guided_choice_returns_every_options_logprob(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    options = {"guided_choice": ["one", "two", "three"], "logprobs": True, "max_tokens": 1}
    result = await client.create(_msgs("say one two three"), extra_create_args=options)
    tops = result.logprobs[0].top_logprobs
    assert [bytes(t.bytes).decode() for t in tops] == ["one", "two", "three"]
    best = max(range(3), key=lambda i: tops[i].logprob)
    assert result.content == ["one", "two", "three"][best]
    assert all(t.logprob < 0 for t in tops)  # log-probabilities over the whole vocabulary


async def test_in_process_expected_score_is_a_weighted_mean(tiny_model_dir, scripted):
    pool = BackendPool()
    scorer = AlignmentScorer("judge", pool.client(f"hf:{tiny_model_dir}"), score_mode="expected")
    out = await scorer(VIEW)
    assert out.value.distribution is not None and sum(out.value.distribution.values()) == pytest.approx(1.0)
    assert 1 <= out.value.score <= 5 and 0 < out.value.option_share < 1  # five tokens of the whole vocabulary


async def test_auto_score_mode_is_expected_in_process_and_text_elsewhere(tiny_model_dir):
    # The embedded judge answers "1" to nearly everything: by default an in-process judge scores from its
    # distribution, which such a client always returns; a server or scripted client keeps text scores.
    in_process = AlignmentScorer("judge", BackendPool().client(f"hf:{tiny_model_dir}"))
    out = await in_process(VIEW)
    assert in_process.score_mode == "expected" and out.value.mode == "expected" and out.value.distribution
    with StubOpenAIServer(respond=lambda m: "4") as server:
        remote = AlignmentScorer("judge", BackendPool().client(server.spec()))
        out = await remote(VIEW)
    assert remote.score_mode == "text" and out.value.mode == "text" and out.value.score == 4.0
    forced = AlignmentScorer("judge", BackendPool().client(f"hf:{tiny_model_dir}"), score_mode="text")
    assert forced.score_mode == "text"


async def test_seeded_sampling_does_not_depend_on_the_batch(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir, max_batch_size=8)
    options = {"temperature": 1.0, "max_tokens": 8, "seed": 11}
    alone = await client.create(_msgs("hello"), extra_create_args=options)
    others = [client.create(_msgs(p), extra_create_args={**options, "seed": 100 + i})
              for i, p in enumerate(["the cat", "what is", "red blue"])]  # fmt: skip
    batched, *rest = await asyncio.gather(client.create(_msgs("hello"), extra_create_args=options), *others)
    assert client.batch_sizes[-1] == 4  # different seeds still share one generate() call
    assert batched.content == alone.content
    other_seeds = [await client.create(_msgs("hello"), extra_create_args={**options, "seed": s}) for s in range(6)]
    assert len({r.content for r in other_seeds}) > 1  # and a seed does change the sample


async def test_no_repetition_penalty_unless_asked(tiny_model_dir):
    client = TransformersChatClient(tiny_model_dir)
    client.load()
    seen = []
    generate = client.model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return generate(**kwargs)

    client.model.generate = spy
    await client.create(_msgs("hello"), extra_create_args={"max_tokens": 2})
    await client.create(_msgs("hello"), extra_create_args={"max_tokens": 2, "repetition_penalty": 1.3})
    assert "repetition_penalty" not in seen[0] and seen[1]["repetition_penalty"] == 1.3


class SpaceMarkedTokenizer:
    """A tokenizer as SentencePiece's (Llama 2, Mistral) writes digits: every option starts with one "▁" token."""

    def __init__(self, inner, marker):
        self.inner, self.marker = inner, marker

    def __call__(self, text, **kwargs):
        out = self.inner(text, **kwargs)
        if isinstance(text, str):  # an option; whole prompts are encoded as a list
            out["input_ids"] = [self.marker, *out["input_ids"]]
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_choice_tokens_skip_the_start_all_options_share():
    def tokenizer(text, add_special_tokens=False):
        return {"input_ids": [7, 9, ord(text[0]), 1][: 2 + len(text)]}

    assert choice_tokens(tokenizer, ["1", "2", "3"]) == ([7, 9], [ord("1"), ord("2"), ord("3")])
    assert choice_tokens(tokenizer, ["1"]) == ([], [7])  # one option: its own first token
    with pytest.raises(BackendError, match=r"guided choice \['1', '1'\]: no token tells the options apart"):
        choice_tokens(tokenizer, ["1", "1"])
    tokenizer.unk_token_id = ord("6")  # an option the vocabulary lacks is no answer the model could give
    with pytest.raises(BackendError, match=r"the tokenizer has no token for \['6'\]"):
        choice_tokens(tokenizer, ["5", "6"])


async def test_in_process_guided_choice_reads_past_a_shared_start(tiny_model_dir):
    # Read at their shared first token, every option had one log-probability: a constant expected score of 3.
    import torch

    client = TransformersChatClient(tiny_model_dir)
    client.load()
    marker = client.tokenizer("the", add_special_tokens=False)["input_ids"][0]
    client.tokenizer = SpaceMarkedTokenizer(client.tokenizer, marker)
    options = {"guided_choice": ["one", "two", "three"], "logprobs": True, "max_tokens": 1}
    result = await client.create(_msgs("say one two three"), extra_create_args=options)
    got = [t.logprob for t in result.logprobs[0].top_logprobs]
    assert len(set(got)) == 3
    prompt = client.tokenizer.inner([client.render_chat([{"role": "user", "content": "say one two three"}])],
                                    return_tensors="pt", add_special_tokens=False)["input_ids"]  # fmt: skip
    with torch.inference_mode():
        steps = torch.log_softmax(client.model(torch.cat([prompt, torch.tensor([[marker]])], 1)).logits[0].float(), -1)
    firsts = [client.tokenizer.inner(o, add_special_tokens=False)["input_ids"][0] for o in ("one", "two", "three")]
    assert got == pytest.approx([(steps[-2, marker] + steps[-1, t]).item() for t in firsts], abs=1e-4)
