"""``aloe trees`` and ``aloe graph``: list, show and export conversation trees; the turn loop as Mermaid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from aloekit.cli.app import App, pass_app
from aloekit.errors import AloeError
from aloekit.outputs import write_text


@click.group()
def trees() -> None:
    """List, show and export conversation trees."""


@trees.command("list")
@click.option("--run", "run_id", help="Only this run's conversations.")
@pass_app
def trees_list(app: App, run_id: str | None) -> None:
    """Conversations with persona, turns and status."""
    from aloekit.graphs import TreeStore

    trees = TreeStore(app.store)
    if run_id is not None and app.store.get_run(run_id) is None:
        raise AloeError(f"no run {run_id!r} in {app.store.path}")
    rows = trees.conversations(run_id)
    if app.as_json:
        app.emit_json(
            [
                {
                    "id": c.id,
                    "key": trees.key(c),
                    "run_id": c.run_id,
                    "status": c.status,
                    "turns_done": c.turns_done,
                    "max_turns": c.max_turns,
                    "error": c.error,
                    "profile": c.persona.profile.text,
                    "personality": c.persona.personality.text,
                    "profile_id": c.persona.profile.id,
                    "personality_id": c.persona.personality.id,
                }
                for c in rows
            ]
        )
        return
    for c in rows:
        click.echo(f"{c.id}  {c.status:<10} {c.turns_done:>2}/{c.max_turns:<2}  {c.persona.profile.text[:70]}")


@trees.command("show")
@click.argument("conversation_id")
@pass_app
def trees_show(app: App, conversation_id: str) -> None:
    """A readable transcript: candidates, labels and the continued branch; an evaluation's replies with scores."""
    from aloekit.graphs import TreeStore

    store = TreeStore(app.store)
    conversation = store.get(conversation_id)
    tree = store.tree(conversation_id)
    if app.as_json:
        app.emit_json(tree.to_json())
        return
    kind = "evaluation, " if conversation.kind == "evaluation" else ""
    click.echo(f"conversation {conversation_id} ({kind}{conversation.status}, {conversation.turns_done} turns)")
    click.echo(conversation.persona.describe())
    click.echo(tree.transcript())


@trees.command("export")
@click.argument("conversation_id")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "mermaid", "dot", "html"]), default="json", show_default=True
)
@click.option("--out", type=click.Path(path_type=Path), help="File to write (default: stdout).")
@pass_app
def trees_export(app: App, conversation_id: str, fmt: str, out: Path | None) -> None:
    """Export one tree (an evaluation's with its scores) as node-link JSON, Mermaid, Graphviz DOT or HTML."""
    from aloekit.graphs import TreeStore

    if fmt == "html":
        from aloekit.viewer import tree_page

        rendered = tree_page(app.store, conversation_id, standalone=True)
        if rendered is None:
            raise AloeError(f"no conversation {conversation_id!r} in {app.store.path}")
        text = rendered[0]
    else:
        tree = TreeStore(app.store).tree(conversation_id)
        text = {"json": lambda: json.dumps(tree.to_json(), indent=1), "mermaid": tree.to_mermaid, "dot": tree.to_dot}[
            fmt
        ]()
    if out is None:
        click.echo(text)
    else:
        write_text(out, text, "--out")
        app.say(f"wrote {out}")


@click.group()
def graph() -> None:
    """The simulation state machine."""


@graph.command("show")
@pass_app
def graph_show(app: App) -> None:
    """Print the turn loop as Mermaid (with --json: {"mermaid": ...})."""
    if app.as_json:
        app.emit_json({"mermaid": generation_graph_mermaid()})
        return
    click.echo(generation_graph_mermaid())


def generation_graph_mermaid() -> str:
    """Mermaid of the generation graph (its shape does not depend on the roles, so placeholders serve)."""
    from aloekit.graphs import Responder, RoleSet, build_generation_graph

    placeholder: Any = None
    roles = RoleSet(
        user=placeholder,
        inducer=placeholder,
        judge=placeholder,
        responders=[Responder(placeholder, True), Responder(placeholder, False)],
    )
    return build_generation_graph(roles).get_graph().draw_mermaid()


commands = (trees, graph)
