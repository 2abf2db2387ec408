"""Hand-built turn records for flattening tests."""

from aloekit.agents.base import CallRecord
from aloekit.agents.judge import Verdict
from aloekit.graphs.records import CandidateRecord, TurnRecord


def record(cid, turn, user, replies, preferred, continued, agreement=None):
    call = [CallRecord(backend="scripted:x", messages=[], raw="")]
    return TurnRecord(
        conversation_id=cid, turn=turn, user_message=user, user_calls=call, hint=None, inducer_text="None",
        inducer_calls=call, judge_calls=call, continued=continued,
        candidates=[CandidateRecord(index=i, responder=f"r{i}", backend="scripted:x", used_hint=i == 0, text=t,
                                    calls=call) for i, t in enumerate(replies)],
        verdict=Verdict(preferred=preferred, order=list(range(len(replies))), raw=["x"], agreement=agreement),
    )  # fmt: skip


def conversation_a():
    """Three turns: turn 2's verdict is invalid; the rejected reply continues at turn 1."""
    return [
        record("a", 1, "hi, I bake bread", ["ooh what kind?", "ok"], preferred=0, continued=1),
        record("a", 2, "sourdough mostly", ["nice", "cool"], preferred=-1, continued=0),
        record("a", 3, "and you?", ["I love rye", "no"], preferred=0, continued=0),
    ]


def conversation_b():
    return [
        record("b", 1, "I run marathons", ["how many?", "wow"], preferred=1, continued=0, agreement=True),
        record("b", 2, "twelve so far", ["impressive!", "same reply"], preferred=0, continued=1, agreement=False),
    ]
