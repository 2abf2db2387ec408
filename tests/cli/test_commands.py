import json

from aloekit.testing import Reply, StubOpenAIServer


def _one_line_error(proc, needle):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def test_help_lists_the_commands(run_aloe):
    proc = run_aloe("--help")
    assert proc.returncode == 0
    for command in ("backends", "chat", "runs"):
        assert command in proc.stdout


def test_backends_list_json(run_aloe):
    prefixes = {row["prefix"] for row in json.loads(run_aloe("--json", "backends", "list").stdout)}
    assert {"local", "hf", "openai", "replay"} <= prefixes


def test_unknown_prefix(run_aloe):
    _one_line_error(run_aloe("backends", "check", "vllm:llama"), "unknown backend prefix 'vllm'")


def test_missing_adapter(run_aloe):
    _one_line_error(run_aloe("chat", "local:smollm2+/no/such/adapter", "hi"), "adapter path not found")


def test_unreachable_server(run_aloe):
    proc = run_aloe("backends", "check", "openai:http://127.0.0.1:9/v1#m", env={"ALOE_BACKEND__MAX_RETRIES": "1"})
    _one_line_error(proc, "could not connect to the server")


def test_malformed_config(run_aloe, tmp_path):
    (tmp_path / "bad.toml").write_text("[backend\n")
    _one_line_error(run_aloe("--config", "bad.toml", "runs", "list"), "config file bad.toml")


def test_check_against_a_server_records_the_run(run_aloe):
    with StubOpenAIServer([Reply(text="Paris.")]) as server:
        proc = run_aloe("backends", "check", server.spec())
        assert proc.returncode == 0, proc.stderr
        assert "reply:   Paris." in proc.stdout and "latency:" in proc.stdout and "tokens:" in proc.stdout
        assert server.requests[0]["max_tokens"] == 48 and server.requests[0]["temperature"] == 0
    runs = json.loads(run_aloe("--json", "runs", "list").stdout)
    assert runs[0]["status"] == "completed" and runs[0]["calls"] == 1
    assert runs[0]["command"] == f"aloe backends check '{server.spec()}'"


def test_failed_run_is_recorded_as_failed(run_aloe):
    with StubOpenAIServer([Reply("status", status=401)]) as server:
        assert run_aloe("backends", "check", server.spec()).returncode == 1
    runs = json.loads(run_aloe("--json", "runs", "list").stdout)
    assert runs[0]["status"] == "failed" and "HTTP 401" in runs[0]["error"]


def test_chat_one_shot_quiet_and_json(run_aloe):
    with StubOpenAIServer(respond=lambda messages: f"you said {messages[-1]['content']}") as server:
        assert run_aloe("chat", server.spec(), "hello", "--max-tokens", "5").stdout.strip() == "you said hello"
        data = json.loads(run_aloe("--json", "chat", server.spec(), "hey", "--system", "be brief").stdout)
        assert data["reply"] == "you said hey" and data["completion_tokens"] == 3
        assert server.requests[1]["messages"][0] == {"role": "system", "content": "be brief"}


def test_chat_interactive_keeps_history(run_aloe):
    with StubOpenAIServer(respond=lambda messages: f"turn {len(messages)}") as server:
        proc = run_aloe("chat", server.spec(), input="one\ntwo\n")
    assert proc.returncode == 0, proc.stderr
    assert "bot> turn 1" in proc.stdout and "bot> turn 3" in proc.stdout
    assert [m["content"] for m in server.requests[1]["messages"]] == ["one", "turn 1", "two"]
