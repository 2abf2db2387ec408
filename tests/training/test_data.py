import json
from pathlib import Path

from aloekit.graphs import ConversationTree
from aloekit.graphs.records import TurnRecord
from aloekit.training import (
    FlattenReport,
    conversation_rows,
    dpo_rows,
    sft_rows,
    split_by_conversation,
    tree_rows,
    trees_from_rows,
)
from tests.graphs.scripted import PERSONA
from tests.training.records import conversation_a, conversation_b, record

U, A = "user", "assistant"


def msg(role, content):
    return {"role": role, "content": content}


def test_dpo_rows_exact():
    report = FlattenReport()
    rows = dpo_rows({"a": conversation_a(), "b": conversation_b()}, report=report)
    assert [(r["conversation_id"], r["turn"]) for r in rows] == [("a", 1), ("a", 3), ("b", 1), ("b", 2)]
    assert rows[0] == {
        "prompt": [msg(U, "hi, I bake bread")], "chosen": [msg(A, "ooh what kind?")], "rejected": [msg(A, "ok")],
        "conversation_id": "a", "turn": 1,
    }  # fmt: skip
    # The prompt follows the path actually taken: "ok" continued turn 1, "nice" continued turn 2.
    assert rows[1]["prompt"] == [msg(U, "hi, I bake bread"), msg(A, "ok"), msg(U, "sourdough mostly"),
                                 msg(A, "nice"), msg(U, "and you?")]  # fmt: skip
    assert (rows[1]["chosen"], rows[1]["rejected"]) == ([msg(A, "I love rye")], [msg(A, "no")])
    assert rows[2]["chosen"] == [msg(A, "wow")] and rows[2]["rejected"] == [msg(A, "how many?")]
    assert report.unlabelled_turns == 1 and report.rows == 4


def test_dpo_prompt_is_a_prefix_of_the_continued_path_and_pairs_differ():
    conversations = {"a": conversation_a(), "b": conversation_b()}
    for row in dpo_rows(conversations):
        records = sorted(conversations[row["conversation_id"]], key=lambda r: r.turn)
        path = []
        for r in records:
            path += [msg(U, r.user_message), msg(A, r.candidates[r.continued].text)]
        assert path[: len(row["prompt"])] == row["prompt"]
        assert row["prompt"][-1]["role"] == U and row["chosen"] != row["rejected"]


def test_identical_replies_and_disagreement_are_filtered():
    same = [record("c", 1, "hello", ["same", "same "], preferred=0, continued=0)]
    report = FlattenReport()
    assert dpo_rows({"c": same}, report=report) == [] and report.identical_pairs == 1
    report = FlattenReport()
    rows = dpo_rows({"b": conversation_b()}, require_agreement=True, report=report)
    assert [r["turn"] for r in rows] == [1] and report.disagreeing_turns == 1
    # A turn judged in one order only has no agreement to require: left out, and counted apart.
    report = FlattenReport()
    asked_once = [record("c", 1, "hi", ["hello there", "hey"], preferred=0, continued=0)]
    assert dpo_rows({"c": asked_once}, require_agreement=True, report=report) == []
    assert report.one_order_turns == 1 and report.disagreeing_turns == 0


def test_more_than_two_candidates_give_a_row_per_rejected_reply():
    three = [record("d", 1, "hey", ["best", "worse", "worst"], preferred=0, continued=2)]
    rows = dpo_rows({"d": three})
    assert [r["rejected"][0]["content"] for r in rows] == ["worse", "worst"]


def test_sft_rows_are_per_turn_prompt_completion_along_the_path_taken():
    report = FlattenReport()
    rows = sft_rows({"a": conversation_a(), "b": conversation_b()}, report=report)
    assert [(r["conversation_id"], r["turn"]) for r in rows] == [("a", 1), ("a", 3), ("b", 1), ("b", 2)]
    assert rows[0] == {"prompt": [msg(U, "hi, I bake bread")], "completion": [msg(A, "ooh what kind?")],
                       "conversation_id": "a", "turn": 1}  # fmt: skip
    # Turn 1 of "a" continued with the rejected "ok": the turn-2 user message answered "ok", so "ok" is what
    # the prompt shows, not the preferred reply (the old export put "ooh what kind?" there: a conversation
    # that never happened). The unlabelled turn 2 gives no row but stays in the path.
    assert rows[1]["prompt"] == [msg(U, "hi, I bake bread"), msg(A, "ok"), msg(U, "sourdough mostly"),
                                 msg(A, "nice"), msg(U, "and you?")]  # fmt: skip
    assert rows[1]["completion"] == [msg(A, "I love rye")]
    assert report.unlabelled_turns == 1 and report.rows == 4 and report.conversations == 2


def test_sft_prompt_at_turn_two_holds_the_rejected_reply_that_continued():
    rows = sft_rows({"b": conversation_b()})
    turn2 = next(r for r in rows if r["turn"] == 2)
    # Turn 1: "wow" was preferred but "how many?" continued, and the user answered it ("twelve so far").
    assert turn2["prompt"] == [msg(U, "I run marathons"), msg(A, "how many?"), msg(U, "twelve so far")]
    assert turn2["completion"] == [msg(A, "impressive!")]


def test_every_sft_prompt_is_a_prefix_of_the_continued_path():
    conversations = {"a": conversation_a(), "b": conversation_b()}
    for branch in ("preferred", "rejected"):
        for row in sft_rows(conversations, branch=branch):
            path = []
            for r in sorted(conversations[row["conversation_id"]], key=lambda r: r.turn):
                path += [msg(U, r.user_message), msg(A, r.candidates[r.continued].text)]
            assert path[: len(row["prompt"])] == row["prompt"] and row["prompt"][-1]["role"] == U


def test_sft_rejected_branch_and_min_turns():
    rejected = sft_rows({"b": conversation_b()}, branch="rejected")
    assert [r["completion"][0]["content"] for r in rejected] == ["how many?", "same reply"]
    assert sft_rows({"a": conversation_a()}, min_turns=4) == []


def test_whole_conversation_rows_stop_where_they_stop_being_coherent():
    report = FlattenReport()
    rows = conversation_rows({"a": conversation_a(), "b": conversation_b()}, report=report)
    # "a": turn 1's preferred reply did not continue: the row ends with turn 1 (its user message is real).
    # "b": the same at turn 1. Both are cut, and counted.
    assert rows == [
        {"messages": [msg(U, "hi, I bake bread"), msg(A, "ooh what kind?")], "conversation_id": "a", "turns": 1},
        {"messages": [msg(U, "I run marathons"), msg(A, "wow")], "conversation_id": "b", "turns": 1},
    ]  # fmt: skip
    assert report.cut_conversations == 2
    coherent = [record("c", t, f"user {t}", [f"good {t}", f"bad {t}"], preferred=0, continued=0) for t in (1, 2, 3)]
    [row] = conversation_rows({"c": coherent})
    assert row["turns"] == 3 and [m["content"] for m in row["messages"]][-2:] == ["user 3", "good 3"]
    # The rejected branch of the same conversation is incoherent from turn 1 on.
    assert conversation_rows({"c": coherent}, branch="rejected")[0]["turns"] == 1


def test_split_by_conversation_has_no_leakage():
    rows = [{"conversation_id": f"c{i}", "turn": t} for i in range(20) for t in range(3)]
    train, val = split_by_conversation(rows, 0.25, seed=1)
    train_ids, val_ids = {r["conversation_id"] for r in train}, {r["conversation_id"] for r in val}
    assert not train_ids & val_ids and len(val_ids) == 5 and len(train) + len(val) == 60
    assert split_by_conversation(rows, 0.25, seed=1) == (train, val)
    assert split_by_conversation(rows, 0.0) == (rows, [])


def test_copies_of_one_conversation_go_to_one_side():
    # A same-seed rerun exported beside its run (KEY-2), or a tree row under its database id, is the same
    # conversation: on opposite sides it would put training data into validation.
    rows = [{"conversation_id": f"c{i}{copy}", "turn": 1} for i in range(20) for copy in ("", "-2", "-db")]
    same = {f"c{i}{copy}": f"c{i}" for i in range(20) for copy in ("-2", "-db")}
    train, val = split_by_conversation(rows, 0.25, seed=3, same=same)
    base = {r["conversation_id"].split("-")[0] for r in val}
    assert len(base) == 5 and len(val) == 15
    assert not base & {r["conversation_id"].split("-")[0] for r in train}
    # Alone, the run's own rows split as they did before copies were exported beside them.
    alone = [r for r in rows if "-" not in r["conversation_id"]]
    assert split_by_conversation(alone, 0.25, seed=3)[1] == [r for r in val if "-" not in r["conversation_id"]]


def test_flat_tree_export_round_trips(tmp_path):
    path = Path(__file__).parent.parent / "data" / "turn_records.json"
    records = [TurnRecord.model_validate(r) for r in json.loads(path.read_text())]
    tree = ConversationTree.from_records("conv", PERSONA, records)
    rows = json.loads(json.dumps(tree_rows([tree])))
    assert len(rows) == 7 and sum(r["parent_id"] is None for r in rows) == 1
    [again] = trees_from_rows(rows)
    assert sorted(again.graph.nodes(data=True)) == sorted(tree.graph.nodes(data=True))
    assert sorted(again.graph.edges(data=True)) == sorted(tree.graph.edges(data=True))
    assert again.continued_path() == tree.continued_path()


def test_exports_of_the_same_conversations_hold_out_the_same_ones():
    # A conversation that gave DPO no pairs must not shift DPO's validation set onto SFT's training data.
    same = {f"c{i}": f"c{i}" for i in range(20)}
    sft = [{"conversation_id": f"c{i}"} for i in range(20)]
    dpo = [row for row in sft if row["conversation_id"] not in {"c3", "c11"}]
    held_out = {r["conversation_id"] for r in split_by_conversation(sft, 0.25, seed=4, same=same)[1]}
    assert {r["conversation_id"] for r in split_by_conversation(dpo, 0.25, seed=4, same=same)[1]} == held_out - {
        "c3",
        "c11",
    }
