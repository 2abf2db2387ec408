"""The engine benchmark names each column by what the model ran with, so a fallback never passes for the
engine or weights that were asked."""

from benchmarks.bench_engine import column_label


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
