"""Every role's prompt fits strict chat templates (Mistral-Instruct's): user first, roles alternating, no
system role where the template has none; a role whose prompt a template rejects fails when it is built."""

from __future__ import annotations

import json
import shutil

import pytest
from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_ext.models.replay import ReplayChatCompletionClient
from click.testing import CliRunner

from aloekit.agents import PromptRole, UserSimulator, register_role
from aloekit.agents.backends import BackendPool, register_backend
from aloekit.agents.backends.messages import alternation_error, conform, from_dicts, to_dicts
from aloekit.agents.base import probe_view
from aloekit.cli import cli
from aloekit.config import AloeConfig
from aloekit.errors import ConfigError
from aloekit.evaluation import EvalConfig
from aloekit.evaluation.task import build_eval_roles
from aloekit.graphs import SimulationConfig
from aloekit.graphs.simulate import build_role, build_roles
from aloekit.store import Store
from tests.helpers import build_tiny_chat_model

# Mistral-7B-Instruct-v0.1's template, as published: a system message, or two of one role in a row, raise.
STRICT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def with_template(source, target, template):
    """A copy of the tiny model whose tokenizer carries ``template``."""
    shutil.copytree(source, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    (target / "chat_template.jinja").unlink(missing_ok=True)
    return target


@pytest.fixture(scope="module")
def strict_model(tmp_path_factory):
    tiny = build_tiny_chat_model(tmp_path_factory.mktemp("tiny"))
    return with_template(tiny, tmp_path_factory.mktemp("strict") / "model", STRICT_TEMPLATE)


def test_conform_merges_runs_of_one_role_and_can_fold_the_system_prompt():
    messages = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    assert conform(messages) == [{"role": "system", "content": "rules"}, {"role": "user", "content": "a\n\nb"}]
    assert conform(messages, system_role=False) == [{"role": "user", "content": "rules\n\na\n\nb"}]
    assert conform([{"role": "system", "content": "rules"}], system_role=False) == [
        {"role": "user", "content": "rules"}
    ]
    assert alternation_error([{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}])
    assert alternation_error(conform(messages)) is None


def test_the_user_simulator_alternates_from_a_user_message_at_every_turn():
    simulator = UserSimulator("user", ReplayChatCompletionClient([]))
    for turn in (1, 2, 5):
        messages = simulator.render(probe_view(turn=turn))
        assert alternation_error(messages) is None, (turn, [m["role"] for m in messages])
        assert messages[-1]["role"] == "user"  # the assistant's latest reply, or the request to open the chat


def test_every_builtin_role_runs_on_a_strict_template_model(strict_model, tmp_path):
    """The whole simulation on a model whose template is Mistral-v0.1's: every role's prompt renders."""
    spec = f"hf:{strict_model}"
    runner = CliRunner()
    args = ["--db", str(tmp_path / "aloe.db"), "--json", "simulate", "--conversations", "1", "--turns", "3",
            "--role", f"all={spec}"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["statuses"] == {"complete": 1}
    calls = Store(tmp_path / "aloe.db").calls()
    assert {c["role"] for c in calls} >= {"user", "inducer", "preferred", "plain", "judge"}
    for call in calls:  # what was logged alternates; the system prompt went to the model inside a user turn
        assert alternation_error(call["messages"]) is None, (call["role"], [m["role"] for m in call["messages"]])
    # Evaluation roles too, baselines included.
    pool = BackendPool(AloeConfig())
    for baseline in ("blind", "oracle", "reminder", "cot", "self-critique"):
        config = EvalConfig(model=spec, baseline=baseline).with_backend("user", spec).with_backend("judge", spec)
        build_eval_roles(config, pool)


def test_a_template_that_rejects_a_role_prompt_fails_when_the_role_is_built(strict_model, tmp_path):
    # A template that takes only short conversations: the user simulator's turn-3 prompt is too long for it.
    short = STRICT_TEMPLATE.replace(
        "{{ bos_token }}", "{% if messages | length > 3 %}{{ raise_exception('at most 3 messages') }}{% endif %}"
    )
    spec = f"hf:{with_template(strict_model, tmp_path / 'short', short)}"
    config = SimulationConfig().with_backend("all", spec)
    with pytest.raises(ConfigError, match=r"role 'user' \(user_simulator\).*template rejects its prompt at turn 3: "
                                          r"at most 3 messages"):  # fmt: skip
        build_roles(config, BackendPool(AloeConfig()))


@register_role("assistant_first_test_role")
class AssistantFirst(PromptRole):
    """A custom role whose prompt starts with the assistant: no strict template can take it."""

    def render(self, view):
        return [{"role": "assistant", "content": "I go first."}, {"role": "user", "content": "fine"}]


@pytest.mark.parametrize("backend", ["openai:http://127.0.0.1:9/v1#m", "strict"])
def test_a_role_that_breaks_alternation_is_refused_naming_it(strict_model, backend):
    spec = f"hf:{strict_model}" if backend == "strict" else backend
    role = SimulationConfig().with_backend("all", spec).inducer.model_copy(update={"kind": "assistant_first_test_role"})
    with pytest.raises(ConfigError, match=r"role 'inducer' \(assistant_first_test_role\).*at turn 1 starts with a "
                                          r"'assistant' message"):  # fmt: skip
        build_role(BackendPool(AloeConfig()), "inducer", role)


async def test_a_server_without_a_system_role_gets_the_system_prompt_in_the_first_user_message():
    seen = []

    class Recording(ReplayChatCompletionClient):
        async def create(self, messages, **kwargs):
            seen.append(to_dicts(messages))
            return CreateResult(finish_reason="stop", content="ok", cached=False,
                                usage=RequestUsage(prompt_tokens=1, completion_tokens=1))  # fmt: skip

    register_backend("recording-test", description="test: records what is sent")(lambda spec, settings: Recording([]))
    config = AloeConfig.model_validate({"backends": {"recording-test:x": {"system_role": False}}})
    client = BackendPool(config).client("recording-test:x")
    prompt = [{"role": "system", "content": "rules"}, {"role": "user", "content": "hi"}]
    await client.create(from_dicts(prompt))
    assert seen[-1] == [{"role": "user", "content": "rules\n\nhi"}]
    # A tool call and its result (an agent's turn) pass through: only the system prompt moves.
    call = FunctionCall(id="1", name="to_fahrenheit", arguments='{"celsius": 21}')
    agent_turn = [SystemMessage(content="rules"), UserMessage(content="21 degrees!", source="user"),
                  AssistantMessage(content=[call], source="a"),
                  FunctionExecutionResultMessage(content=[
                      FunctionExecutionResult(content="69.8", call_id="1", name="to_fahrenheit")])]  # fmt: skip
    await client.create(agent_turn)
    assert [m["role"] for m in seen[-1]] == ["user", "assistant", "tool"]
    assert seen[-1][0]["content"] == "rules\n\n21 degrees!"
