"""The stub server's role-aware replies, padded to a length for benchmarks."""

from __future__ import annotations

from aloekit.testing import role_aware_reply

USER = [{"role": "system", "content": "You are playing a real person. Profile: a baker."}]
ASSISTANT = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi there"}]
JUDGE = [{"role": "user", "content": "The person just wrote:\nhi\n\nCandidate replies:\nMessage 1: a"}]
INDUCER = [{"role": "user", "content": "The chat so far:\nUser: hi\nUser: again"}]


def test_conversational_replies_are_padded_with_words_of_their_own_and_role_answers_are_not():
    for prompt in (USER, ASSISTANT):
        plain, padded = role_aware_reply(prompt), role_aware_reply(prompt, reply_chars=190)
        assert padded.startswith(plain) and 189 <= len(padded) < 190 + 12
        assert role_aware_reply(prompt, reply_chars=190) == padded  # the same prompt, the same reply
    other = [*ASSISTANT[:1], {"role": "user", "content": "Hi there!"}]
    assert role_aware_reply(other, 190)[40:] != role_aware_reply(ASSISTANT, 190)[40:]  # padding not shared
    for prompt in (JUDGE, INDUCER):
        assert role_aware_reply(prompt, reply_chars=190) == role_aware_reply(prompt)
