"""The engine benchmark names each column by what the model ran with, so a fallback never passes for the
engine or weights that were asked."""

from benchmarks.bench_engine import SINGLE_STREAM_CHATS, aloekit_rates, column_label
from tests.helpers import ScriptedClient


def test_columns_name_what_ran_and_what_fell_back():
    assert column_label("auto", "auto", {"engine": "continuous", "weights": "float"}) == "continuous"
    assert column_label("static", "packed", {"engine": "static", "weights": "packed"}) == "static, packed"
    # transformers < 5.19 has no continuous batching; a GPU has no packed weights.
    fell_back = column_label("continuous", "packed", {"engine": "static", "weights": "float"})
    assert fell_back == "static (asked continuous), float (asked packed)"
    assert column_label("static", "auto", {}) == "static"  # a server reports nothing
    # Where several round sizes were asked, the static engine's columns say which; the continuous one has none.
    assert column_label("static", "auto", {"engine": "static"}, 8) == "static, rounds of 8"
    assert column_label("static", "auto", {"engine": "static"}, 0) == "static, one call"
    assert column_label("continuous", "auto", {"engine": "continuous"}, 8) == "continuous"
    # and which KV cache, where both were asked
    assert column_label("static", "auto", {"engine": "static"}, 8, "dynamic") == "static, rounds of 8, dynamic cache"
    assert column_label("continuous", "auto", {"engine": "continuous"}, None, "growing") == "continuous"
    # and which decoding step, where both were asked
    plain = column_label("static", "auto", {"engine": "static"}, None, None, "plain")
    assert plain == "static, plain steps"
    # and which kernels packed weights took, where several were asked (auto: the ones aloekit chose)
    ran = {"engine": "static", "weights": "packed", "q4_1_matmul": "int8 dot"}
    assert column_label("static", "packed", ran, kernels="torch") == "static, packed, torch kernels"
    assert column_label("static", "packed", ran, kernels="auto") == "static, packed, int8 dot kernels"
    assert column_label("static", "float", {**ran, "weights": "float"}, kernels="torch") == "static, float"


async def test_a_single_stream_answers_eight_chats_one_after_another(scripted):
    """One chat's reply can end after a few tokens, which then measure mostly the request: the single stream
    answers the same chats as 8 concurrent ones, in sequence."""
    in_flight, seen = [0], []

    class Counting(ScriptedClient):
        async def create(self, messages, **kwargs):
            in_flight[0] += 1
            seen.append(in_flight[0])
            try:
                return await super().create(messages, **kwargs)
            finally:
                in_flight[0] -= 1

    spec = scripted("bench", Counting(delay_s=0.01))
    await aloekit_rates(spec, [1, 8], max_tokens=4)
    warm_up, single, concurrent = seen[:8], seen[8:16], seen[16:]
    assert max(warm_up) == max(concurrent) == 8 and len(concurrent) == 8
    assert single == [1] * SINGLE_STREAM_CHATS
