"""``aloe backends`` and ``aloe chat``: the registered backends, a one-message check, a chat."""

from __future__ import annotations

import io
import json
import sys
import time
from contextlib import nullcontext
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from aloekit.agents.backends import BackendPool, from_dicts, list_backends
from aloekit.cli.app import COUNT, SEED, TEMPERATURE, App, ensure_loaded, is_text, pass_app, run_recorded
from aloekit.secrets import redact


async def _chat_once(
    app: App, pool: BackendPool, spec: str, messages: list[dict[str, str]], options: dict[str, Any]
) -> dict[str, Any]:
    await ensure_loaded(app, pool, spec)
    client = pool.client(spec, role="chat")
    started = time.monotonic()
    with app.console.status(redact(f"waiting for {spec}")) if not (app.quiet or app.as_json) else nullcontext():
        result = await client.create(from_dicts(messages), extra_create_args=options)
    return {
        "spec": spec,
        "reply": result.content,
        "finish_reason": result.finish_reason,
        "latency_s": round(time.monotonic() - started, 3),
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
    }


def _generation_options(max_tokens: int | None, temperature: float | None, seed: int | None) -> dict[str, Any]:
    return {
        k: v for k, v in {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}.items() if v is not None
    }


@click.group()
def backends() -> None:
    """List and check LLM backends."""


@backends.command("list")
@pass_app
def backends_list(app: App) -> None:
    """Show the registered backend prefixes (built-in and plugins)."""
    rows = [
        {"prefix": b.prefix, "description": b.description, "example": b.example, "source": b.source}
        for b in list_backends()
    ]
    if app.as_json:
        app.emit_json(rows)
        return
    if app.quiet:
        click.echo("\n".join(r["prefix"] for r in rows))
        return
    table = Table("prefix", "description", "example spec", "source")
    for r in rows:
        table.add_row(r["prefix"], r["description"], r["example"], r["source"])
    Console().print(table)


@backends.command("check")
@click.argument("spec")
@click.option("--message", default="What is the capital of France? Answer in one short sentence.", show_default=True)
@click.option("--max-tokens", type=COUNT, default=48, show_default=True)
@pass_app
def backends_check(app: App, spec: str, message: str, max_tokens: int) -> None:
    """Send one short chat to SPEC; print the reply, latency and tokens (exit 1 on failure)."""
    options = {"max_tokens": max_tokens, "temperature": 0}
    result = run_recorded(
        app, lambda pool: _chat_once(app, pool, spec, [{"role": "user", "content": message}], options), specs=[spec]
    )
    if app.as_json:
        app.emit_json({"ok": True, **result})
    elif app.quiet:
        click.echo(result["reply"])
    else:
        click.echo(f"ok  {spec}")
        click.echo(f"reply:   {result['reply']}")
        click.echo(f"latency: {result['latency_s']:.2f}s")
        click.echo(f"tokens:  {result['prompt_tokens']} prompt + {result['completion_tokens']} completion")


@click.command()
@click.argument("spec")
@click.argument("message", required=False)
@click.option("--system", help="System prompt.")
@click.option("--max-tokens", type=COUNT, help="Upper bound on reply tokens.")
@click.option("--temperature", type=TEMPERATURE, help="Sampling temperature (0 = greedy).")
@click.option("--seed", "call_seed", type=SEED, help="Sampling seed for this chat.")
@pass_app
def chat(
    app: App,
    spec: str,
    message: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    call_seed: int | None,
) -> None:
    """Chat with SPEC: one reply to MESSAGE, or an interactive session when MESSAGE is omitted."""
    options = _generation_options(max_tokens, temperature, call_seed)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    if message is not None:
        history.append({"role": "user", "content": message})
        result = run_recorded(app, lambda pool: _chat_once(app, pool, spec, history, options), specs=[spec])
        app.emit_json(result) if app.as_json else click.echo(result["reply"])
        return

    async def interactive(pool: BackendPool) -> None:
        app.say(f"chatting with {spec}; an empty line, /exit or Ctrl-D ends")
        if isinstance(sys.stdin, io.TextIOWrapper):  # under a strict locale a bad byte would raise inside input()
            sys.stdin.reconfigure(errors="surrogateescape")
        while True:
            try:
                line = input("you> ")  # in the main thread, so Ctrl-C and SIGTERM stop it at once
            except EOFError:
                break
            if not line.strip() or line.strip() == "/exit":
                break
            if not is_text(line):
                app.warn("that line is not valid UTF-8 text; type it again")
                continue
            history.append({"role": "user", "content": line})
            result = await _chat_once(app, pool, spec, history, options)
            history.append({"role": "assistant", "content": result["reply"]})
            click.echo(json.dumps(result) if app.as_json else f"bot> {result['reply']}")

    run_recorded(app, interactive, specs=[spec])


commands = (backends, chat)
