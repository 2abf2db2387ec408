"""``aloe export``: stored trees as SFT, DPO, flat-tree or rollout rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from aloekit.cli.app import TURNS, App, FiniteFloatRange, jsonl_text, pass_app
from aloekit.errors import AloeError
from aloekit.outputs import is_stream_path, output_file, output_folder, write_files
from aloekit.secrets import read_secret


@click.command("export")
@click.argument("kind", type=click.Choice(["sft", "dpo", "tree", "rollouts"]))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="JSONL file (train split); .parquet for --format verl.")  # fmt: skip
@click.option(
    "--format", "rollout_format", default="jsonl", show_default=True, metavar="FORMAT",
    help="rollouts: conversations with a per-message train mask: verl, openrlhf or jsonl (or a registered one).",
)  # fmt: skip
@click.option("--run", "run_ids", multiple=True, help="Only these runs (repeatable; default: every simulation run).")
@click.option(
    "--branch",
    type=click.Choice(["preferred", "rejected"]),
    default="preferred",
    show_default=True,
    help="SFT: train on the preferred replies, or the rejected ones (the paper's control).",
)
@click.option(
    "--val-fraction",
    type=FiniteFloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Share of conversations held out, written beside --out as NAME.val.jsonl.",
)
@click.option("--min-turns", type=TURNS, default=1, show_default=True, help="Skip conversations with fewer turns.")
@click.option(
    "--whole-conversations",
    is_flag=True,
    help="SFT: one messages row per conversation, cut where it stops being coherent (default: one row per turn).",
)
@click.option("--require-agreement", is_flag=True, help="Only turns whose judge agreed with itself in both orders.")
@click.option("--eval-set", default="builtin", show_default=True, help="Eval set to report persona overlap against.")
@click.option("--hf-dataset", type=click.Path(path_type=Path), help="Also save a datasets.DatasetDict here.")
@click.option("--push-to-hub", "hub_repo", help="Also push the DatasetDict to this Hub repo (needs HF_TOKEN).")
@pass_app
def export(
    app: App,
    kind: str,
    out: Path,
    run_ids: tuple[str, ...],
    rollout_format: str,
    branch: str,
    val_fraction: float,
    min_turns: int,
    whole_conversations: bool,
    require_agreement: bool,
    eval_set: str,
    hf_dataset: Path | None,
    hub_repo: str | None,
) -> None:
    """Flatten stored conversation trees into SFT, DPO, flat-tree or rollout rows."""
    from aloekit.evaluation.task import eval_persona_ids
    from aloekit.graphs import TreeStore
    from aloekit.training import (
        FlattenReport,
        conversation_rows,
        dpo_rows,
        sft_rows,
        split_by_conversation,
        tree_rows,
    )
    from aloekit.training.rollouts import ROLLOUT_FORMATS, rollout_rows  # here: aloe's start-up stays light

    if rollout_format not in ROLLOUT_FORMATS:
        raise AloeError(f"--format {rollout_format}: unknown (use {', '.join(ROLLOUT_FORMATS)})")
    if rollout_format != "jsonl" and kind != "rollouts":
        raise AloeError(f"--format {rollout_format} applies to `aloe export rollouts`, not {kind}")
    to_rows, file_type = ROLLOUT_FORMATS[rollout_format]
    if file_type == "parquet" and out.suffix != ".parquet":
        raise AloeError(f"--out {out}: --format {rollout_format} writes parquet; name the file *.parquet")
    hub_token = read_secret("HF_TOKEN") if hub_repo else None  # read as a secret: redacted from every message
    if hub_repo and not hub_token:
        raise AloeError("--push-to-hub needs a Hugging Face token in HF_TOKEN")
    output_file(out, "--out")
    if hf_dataset:
        output_folder(hf_dataset, "--hf-dataset")
    trees = TreeStore(app.store)
    conversations = [c for run in (run_ids or (None,)) for c in trees.conversations(run)]
    for run in run_ids:
        if app.store.get_run(run) is None:
            raise AloeError(f"no run {run!r} in {app.store.path}")
    # Rollouts include GRPO's online conversations; the offline formats are built from simulation trees.
    conversations = [c for c in conversations if c.kind in (("simulation", "rollout") if kind == "rollouts" else
                                                            ("simulation",))]  # fmt: skip
    # Rows name conversations by a key from (seed, position, persona), so a rerun exports the same bytes.
    keys = trees.export_keys(conversations)
    records = {keys[c.id]: trees.records(c.id) for c in conversations}
    report = FlattenReport()
    options = {"min_turns": min_turns, "require_agreement": require_agreement, "report": report}
    if kind == "sft":
        flatten = conversation_rows if whole_conversations else sft_rows
        rows = flatten(records, branch=branch, **options)
    elif kind == "dpo":
        rows = dpo_rows(records, **options)
    elif kind == "rollouts":
        kept = {keys[c.id]: (c.persona, c.max_turns, records[keys[c.id]]) for c in conversations
                if len(records[keys[c.id]]) >= min_turns}  # fmt: skip
        report.short_conversations = len(conversations) - len(kept)
        rows = to_rows(rollout_rows(kept))
    else:
        rows = tree_rows(trees.tree(c.id) for c in conversations if len(records[keys[c.id]]) >= min_turns)
    held_out = eval_persona_ids(eval_set)
    overlapping = [c.id for c in conversations if {c.persona.profile.id, c.persona.personality.id} & held_out]
    names = {*overlapping, *(keys[cid] for cid in overlapping)}  # tree rows keep database ids
    overlap_rows = sum(r["conversation_id"] in names for r in rows)
    if not rows:
        why = [f"{report.unlabelled_turns} unlabelled turns", f"{report.identical_pairs} identical pairs",
               f"{report.short_conversations} too short"]  # fmt: skip
        if require_agreement:
            why += [f"{report.disagreeing_turns} where the judge disagreed with itself",
                    f"{report.one_order_turns} judged in one order only (--require-agreement needs "
                    "judge_both_orders)"]  # fmt: skip
        raise AloeError(f"nothing to export: {len(conversations)} conversations gave no {kind} rows ({', '.join(why)})")
    # Every kind splits the same conversations alike; a same-seed rerun's copy (KEY-2) stays beside KEY.
    same = {name: key for c in conversations for key in [trees.key(c)] for name in (c.id, keys[c.id])}
    if val_fraction and is_stream_path(out):  # the split goes beside --out, which a stream has not
        raise AloeError(f"--val-fraction needs --out to be a file, not the stream {out}: its split goes beside it")
    train, val = split_by_conversation(rows, val_fraction, seed=app.config.seed, same=same)
    if not train:
        raise AloeError(f"--val-fraction {val_fraction:g} held out all {len(rows)} rows: nothing is left to train on")
    from aloekit.training.train import validation_path  # the name training reads the split from

    val_path = validation_path(out)

    def writer(part: list[dict[str, Any]]) -> Callable[[Path], object]:
        if file_type == "parquet":
            from datasets import Dataset

            dataset = Dataset.from_list(part)
            return lambda target: dataset.to_parquet(str(target))
        text = jsonl_text(part)
        return lambda target: target.write_text(text, encoding="utf-8")

    outputs = [(out, "--out", writer(train))]
    if val:
        outputs.append((val_path, "--val-fraction's validation file", writer(val)))
    # Without a split, one left beside --out by an earlier export goes: `aloe train` would read it as this
    # data's validation split, rows of other conversations, perhaps of these very ones.
    stale = [val_path] if not val and val_path.is_file() and not is_stream_path(out) else []
    write_files(outputs, stale=stale)
    written: dict[str, Any] = {"train": str(out), "train_rows": len(train)}
    if val:
        written |= {"validation": str(val_path), "validation_rows": len(val)}
    if stale:
        written["removed_validation"] = str(val_path)
    if hf_dataset or hub_repo:
        from datasets import Dataset, DatasetDict

        splits = {"train": Dataset.from_list(train)} | ({"validation": Dataset.from_list(val)} if val else {})
        dataset = DatasetDict(splits)
        if hf_dataset:
            try:
                dataset.save_to_disk(str(hf_dataset))
            except OSError as exc:
                raise AloeError(f"--hf-dataset {hf_dataset}: cannot write: {exc}") from None
            written["hf_dataset"] = str(hf_dataset)
        if hub_repo:
            try:
                dataset.push_to_hub(hub_repo, token=hub_token)
            except Exception as exc:  # network, auth or repo errors from huggingface_hub, in many types
                raise AloeError(f"--push-to-hub {hub_repo}: {type(exc).__name__}: {exc} (the JSONL files are "
                                "written)") from None  # fmt: skip
            written["hub"] = hub_repo
    result = {
        "kind": kind,
        "conversations": len(conversations),
        **written,
        "skipped": {
            "unlabelled_turns": report.unlabelled_turns,
            "disagreeing_turns": report.disagreeing_turns,
            "one_order_turns": report.one_order_turns,
            "identical_pairs": report.identical_pairs,
            "short_conversations": report.short_conversations,
            "cut_conversations": report.cut_conversations,
        },
        "eval_overlap": {"eval_set": eval_set, "conversations": len(overlapping), "rows": overlap_rows},
    }
    if overlap_rows:
        app.warn(f"warning: {overlap_rows} rows from {len(overlapping)} conversations use personas of the "
                 f"{eval_set} eval set: evaluating on it would measure memory, not adaptation")  # fmt: skip
    if app.as_json:
        app.emit_json(result)
        return
    click.echo(
        f"wrote {len(train)} {kind} rows to {out}" + (f" and {len(val)} to {written['validation']}" if val else "")
    )
    if stale:
        click.echo(f"removed {val_path}, an earlier export's validation split of {out}")
    skipped = {k: v for k, v in result["skipped"].items() if v}
    if skipped:
        click.echo("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    if report.cut_conversations:
        click.echo(f"{report.cut_conversations} conversations were cut where they continued with another reply "
                   "(a whole-conversation row must show every reply its user answered)")  # fmt: skip


commands = (export,)
