"""An autogen agent as a role: the conversation from its side, the role's generation options, the hint,
and one call to register it, tested with a real AssistantAgent and a tool against an HTTP stub server."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import AssistantMessage, ModelInfo, SystemMessage, UserMessage
from autogen_ext.models.replay import ReplayChatCompletionClient

from aloekit.agents import AgentChatRole, BackendPool, RoleView, register_agent_role, register_backend
from aloekit.agents.agentchat import AgentClient
from aloekit.agents.backends.registry import BackendSpec, parse_spec
from aloekit.agents.user import OPENING_PROMPT
from aloekit.config import BackendSettings, GenerationOptions, load_config
from aloekit.errors import ConfigError
from aloekit.graphs.generation import build_generation_graph, initial_state
from aloekit.graphs.simulate import RoleConfig, SimulationConfig, build_role, build_roles, check_role
from aloekit.personas.models import Persona, PersonaPair
from aloekit.testing import StubOpenAIServer, role_aware_reply

# ---- The README example, verbatim (my_agents.py; its two imports are at the top of this file) ------


def celsius_to_fahrenheit(celsius: float) -> str:
    """Convert a temperature from degrees Celsius to Fahrenheit."""
    return f"{celsius:g}°C is {celsius * 9 / 5 + 32:g}°F"


def weather_friend(client):
    # client: the role's backend, with the role's generation options and the inducer's hint applied
    return AssistantAgent(
        "friend",
        model_client=client,
        tools=[celsius_to_fahrenheit],
        reflect_on_tool_use=True,  # answer in words after using the tool, not with its raw result
        system_message="You are chatting with someone as a warm, attentive friend. Reply in one to three sentences.",
    )


register_agent_role("weather_friend", weather_friend)

README_TOML = """\
# aloe.toml, used as: aloe --config aloe.toml simulate
plugins = ["my_agents"]

[[simulation.responders]]
name = "preferred"
kind = "weather_friend"
backend = "openai:gpt-4o-mini"
use_hint = true
generation = { max_tokens = 128, temperature = 0.7 }

[[simulation.responders]]
name = "plain"
kind = "weather_friend"
backend = "openai:gpt-4o-mini"
generation = { max_tokens = 128, temperature = 0.7 }
"""
# ---- end of the README example -------------------------------------------------------------------

HINT = "Profile: bakes bread every weekend"
PERSONA = PersonaPair(
    profile=Persona.new("profile", "A baker living in Lyon."),
    personality=Persona.new("personality", "Cheerful and chatty."),
)
TOOL_MODEL = ModelInfo(
    vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
)


@register_backend("toolserver", description="test-only: an OpenAI-compatible server whose model takes tools")
def _build_tool_server(spec: BackendSpec, settings: BackendSettings) -> Any:
    # aloekit's openai backend describes a server's model as one without function calling, and autogen's
    # client then refuses tools; this one says the model takes them, like an OpenAI model that does.
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    base_url, _, model = spec.target.partition("#")
    return OpenAIChatCompletionClient(model=model, base_url=base_url, api_key="none", max_retries=0,
                                      model_info=TOOL_MODEL)  # fmt: skip


class ToolCallingStub(StubOpenAIServer):
    """The stub server plus what it lacks: a user message about degrees, sent with tools, gets a call to the first."""

    def _handler(self) -> Any:
        base, server = super()._handler(), self

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                last = body["messages"][-1]
                if not (body.get("tools") and last["role"] == "user" and "degrees" in last["content"]):
                    kept, self.rfile = self.rfile, io.BytesIO(raw)  # the stub's handler reads the body itself
                    try:
                        super().do_POST()
                    finally:
                        self.rfile = kept  # the connection stays usable for the next request
                    return
                server._next(body, self.headers.get("Authorization"))  # recorded like any other request
                name = body["tools"][0]["function"]["name"]
                call = {"id": f"call_{len(server.requests)}", "type": "function",
                        "function": {"name": name, "arguments": json.dumps({"celsius": 21})}}  # fmt: skip
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                payload = {"id": "chatcmpl-tool", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}  # fmt: skip
                self._send(200, json.dumps(payload).encode())

        return Handler


def friend_reply(messages: list[dict[str, Any]]) -> str:
    """After the tool ran, a reply naming its result and the turn; anything else, a built-in role's answer."""
    if messages[-1]["role"] == "tool":
        turn = sum(m["role"] == "user" for m in messages)
        return f"Lovely, {messages[-1]['content']} where you are! (reply {turn})"
    return role_aware_reply(messages)


def tool_spec(server: StubOpenAIServer) -> str:
    return f"toolserver:{server.base_url}#{server.model}"


def roles_of(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body["messages"]]


async def talk(role: Any, said: list[str], hint: str | None = HINT) -> list[Any]:
    """Three turns of a conversation continued with the role's own replies; returns its outputs."""
    history: list[dict[str, str]] = []
    outputs = []
    for turn, message in enumerate(said, start=1):
        view = RoleView(conversation_id="c", turn=turn, history=tuple(history), user_message=message, hint=hint)
        outputs.append(await role(view))
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": outputs[-1].text}]
    return outputs


async def test_three_turns_send_the_agents_side_options_and_hint():
    said = ["I baked sourdough this morning.", "The crust came out perfect.", "Any plans for the weekend?"]
    generation = GenerationOptions(max_tokens=77, temperature=0.3)
    with ToolCallingStub(respond=friend_reply) as server:
        pool = BackendPool()
        role = build_role(pool, "preferred", RoleConfig(kind="weather_friend", backend=tool_spec(server),
                                                        generation=generation))  # fmt: skip
        assert isinstance(role, AgentChatRole)
        outputs = await talk(role, said)
        await pool.aclose()

    assert len(server.requests) == 3
    turn_3 = server.requests[2]
    assert roles_of(turn_3) == ["system", "user", "assistant", "user", "assistant", "user"]
    contents = [m["content"] for m in turn_3["messages"][1:]]
    assert contents == [said[0], outputs[0].text, said[1], outputs[1].text, said[2]]  # its own replies: assistant
    system = turn_3["messages"][0]["content"]
    assert system.startswith("You are chatting with someone as a warm, attentive friend.") and HINT in system
    assert [t["function"]["name"] for t in turn_3["tools"]] == ["celsius_to_fahrenheit"]
    for body in server.requests:
        assert body["max_tokens"] == 77 and body["temperature"] == 0.3 and isinstance(body["seed"], int)
    assert outputs[2].calls[0].messages == [{"role": m["role"], "content": m["content"]} for m in turn_3["messages"]]
    assert outputs[2].calls[0].raw == outputs[2].text and pool.ledger.role("preferred").calls == 3


async def test_a_tool_call_round_trip_keeps_the_roles_options_and_hint():
    said = ["I baked sourdough this morning.", "The crust came out perfect.", "It's 21 degrees here today!"]
    with ToolCallingStub(respond=friend_reply) as server:
        spec = tool_spec(server)
        client = _build_tool_server(parse_spec(spec), BackendSettings())  # the role's client, without the pool
        role = AgentChatRole("preferred", weather_friend, client=client, backend=spec,
                             generation={"max_tokens": 77, "temperature": 0.3})  # fmt: skip
        outputs = await talk(role, said)
        await client.close()

    requests = server.requests
    assert len(requests) == 4  # turn 3: one call offering the tool, one answering after it ran
    assert roles_of(requests[2]) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert roles_of(requests[3]) == [*roles_of(requests[2]), "assistant", "tool"]
    assert requests[3]["messages"][-1]["content"] == "21°C is 69.8°F"
    for body in requests:  # the options and the hint reach every call, the tool round trip included
        assert body["max_tokens"] == 77 and body["temperature"] == 0.3 and HINT in body["messages"][0]["content"]
    assert outputs[2].text == "Lovely, 21°C is 69.8°F where you are! (reply 3)"
    calls = outputs[2].calls
    assert len(calls) == 2 and json.loads(calls[0].raw)[0]["name"] == "celsius_to_fahrenheit"
    assert json.loads(calls[1].messages[-2]["content"])[0]["arguments"] == '{"celsius": 21}'
    assert calls[1].messages[-1] == {"role": "tool", "content": "21°C is 69.8°F"} and calls[1].raw == outputs[2].text


async def test_a_tool_call_round_trip_through_the_backend_pool():
    with ToolCallingStub(respond=friend_reply) as server:
        pool = BackendPool()
        role = build_role(pool, "preferred", RoleConfig(kind="weather_friend", backend=tool_spec(server)))
        try:
            out = await role(RoleView(conversation_id="c", turn=1, user_message="It's 21 degrees here today!"))
        finally:
            await pool.aclose()
    assert out.text == "Lovely, 21°C is 69.8°F where you are! (reply 1)"


async def test_an_agent_writing_the_users_turns_sees_the_roles_flipped_and_the_persona():
    history = ({"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
               {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"})  # fmt: skip
    with ToolCallingStub(respond=friend_reply) as server:
        pool = BackendPool()
        role = build_role(pool, "user", RoleConfig(kind="weather_friend", backend=tool_spec(server)))
        await role(RoleView(conversation_id="c", turn=1, persona=PERSONA))
        await role(RoleView(conversation_id="c", turn=3, history=history, persona=PERSONA))
        await pool.aclose()
    opening, turn_3 = server.requests
    assert roles_of(opening) == ["system", "user"] and opening["messages"][1]["content"] == OPENING_PROMPT
    # The request to open the chat stays first, so the roles alternate from a user message (strict templates).
    assert roles_of(turn_3) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in turn_3["messages"][1:]] == [OPENING_PROMPT, "u1", "a1", "u2", "a2"]
    assert "Profile: A baker living in Lyon." in turn_3["messages"][0]["content"]
    assert "Personality: Cheerful and chatty." in turn_3["messages"][0]["content"]


async def test_the_readme_example_runs_from_aloe_toml(tmp_path):
    (tmp_path / "aloe.toml").write_text(README_TOML)
    config = load_config(tmp_path / "aloe.toml")
    assert config.plugins == ["my_agents"]
    simulation = SimulationConfig.model_validate(config.simulation)
    simulation.check_roles()  # what `aloe simulate` checks before a run: kinds, options, templates
    with ToolCallingStub(respond=friend_reply) as server:
        # As `--role all=SPEC` would: every role on the stub (README: openai:gpt-4o-mini for the agents).
        simulation = simulation.with_backend("all", tool_spec(server))
        pool = BackendPool()
        roles = build_roles(simulation, pool)
        assert all(isinstance(r.role, AgentChatRole) for r in roles.responders)
        graph = build_generation_graph(roles)
        state = await graph.ainvoke(initial_state("conv", PERSONA, 3, simulation.seed), config={"recursion_limit": 50})
        await pool.aclose()
    records = state["records"]
    assert len(records) == 3
    assert all(len(r.candidates) == 2 and r.verdict is not None for r in records)
    agent_turn_3 = [b for b in server.requests if b.get("tools") and roles_of(b).count("user") == 3]
    assert len(agent_turn_3) == 2  # both responders, each on its first call of turn 3
    continued = [r.candidates[r.continued].text for r in records[:2]]
    for body in agent_turn_3:
        assert roles_of(body) == ["system", "user", "assistant", "user", "assistant", "user"]
        assert [m["content"] for m in body["messages"][2:5:2]] == continued
        assert body["max_tokens"] == 128 and body["temperature"] == 0.7
    hinted = [b for b in agent_turn_3 if records[2].hint and records[2].hint in b["messages"][0]["content"]]
    assert records[2].hint and len(hinted) == 1  # only the responder with use_hint saw the inducer's report


def test_agent_kinds_are_checked_like_any_role():
    check_role("preferred", RoleConfig(kind="weather_friend", options={"hint_prompt": "\nKnown: {hint}"}))
    with pytest.raises(ConfigError, match=r"role 'preferred'.*hint_prompt.*unknown placeholder \{profile\}"):
        check_role("preferred", RoleConfig(kind="weather_friend", options={"hint_prompt": "{profile}"}))
    with pytest.raises(ConfigError, match="unknown option 'system_prompt'"):
        check_role("preferred", RoleConfig(kind="weather_friend", options={"system_prompt": "x"}))
    register_agent_role("test_agent_no_client", lambda: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigError, match="agent factory must take the role's model client"):
        check_role("preferred", RoleConfig(kind="test_agent_no_client"))


async def test_a_tool_agent_on_a_backend_without_function_calling_fails_in_one_line():
    with StubOpenAIServer() as server:
        pool = BackendPool()
        role = build_role(pool, "preferred", RoleConfig(kind="weather_friend", backend=server.spec()))
        with pytest.raises(ConfigError, match=r"agent factory failed: ValueError: .*function calling.*reports a model"):
            await role(RoleView(conversation_id="c", turn=1, user_message="hi"))
        await pool.aclose()
    assert server.requests == []


async def test_an_agent_with_its_own_client_gets_the_roles_too():
    replay = ReplayChatCompletionClient(["agent reply"])
    role = AgentChatRole("agent", lambda: AssistantAgent("friend", model_client=replay, system_message="Be kind."))
    history = ({"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"})
    out = await role(RoleView(conversation_id="c", turn=2, history=history, user_message="u2", hint=HINT))
    sent = replay.create_calls[0]["messages"]
    assert [type(m) for m in sent] == [SystemMessage, UserMessage, AssistantMessage, UserMessage]
    assert [m.content for m in sent[1:]] == ["u1", "a1", "u2"] and sent[0].content == "Be kind."
    assert out.text == "agent reply" and out.calls[0].messages[-1] == {"role": "user", "content": "u2"}


async def test_agent_client_merges_options_under_the_agents_own_and_adds_the_suffix():
    replay = ReplayChatCompletionClient(["ok", "ok"])
    client = AgentClient(replay, options={"max_tokens": 5, "temperature": 0.0}, system_suffix="\n\nHint: x")
    await client.create([UserMessage(content="hi", source="user")], extra_create_args={"max_tokens": 9})
    await client.create([SystemMessage(content="Sys."), UserMessage(content="hi", source="user")])
    first, second = replay.create_calls
    assert first["extra_create_args"] == {"max_tokens": 9, "temperature": 0.0}
    assert first["messages"][0] == SystemMessage(content="Hint: x")
    assert second["messages"][0] == SystemMessage(content="Sys.\n\nHint: x")
    assert [c.messages[0]["content"] for c in client.calls] == ["Hint: x", "Sys.\n\nHint: x"]
