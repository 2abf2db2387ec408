"""Every bad input gets one ``error:`` line, a non-zero exit, no traceback, and no half-written run.

A table of bad inputs across every subcommand and the config file. Each case runs the real CLI
in-process against a database that already holds a pool, a finished run and an unfinished one; after
it, every table's row count and every run's state is what it was, or the one new run is ``failed``
with its reason.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from aloekit.cli import cli
from aloekit.store import Store
from tests.helpers import seeded_run

FILES: dict[str, bytes | str] = {
    "undecodable.jsonl": b'{"text": "caf\xe9 \xff\xfe"}\n',
    "undecodable.toml": b"[simulation]\nturns = 3 # \xff\xfe\n",
    "deep.json": "[" * 100_000,
    "deep.jsonl": "[" * 100_000 + "\n",
    "deep.yaml": "a: " + "[" * 100_000 + "\n",
    "bad.jsonl": '{"text": "fine"}\n{not json\n',
    "empty.jsonl": "",
    "shape.jsonl": "[1, 2, 3]\n",
    "nulls.jsonl": '{"text": null}\n',
    "notext.csv": "name,age\nann,3\n",
    "a_file": "just a file\n",
    "notdb.db": "hello, this is not a database\n",
    "bad.toml": "[simulation\nturns = 3\n",
    "bad.yaml": "simulation: [turns: 3\n",
    "unknown_top.toml": "nosuch = 1\n",
    "unknown_sim.toml": "[simulation]\nturnz = 3\n",
    "type_sim.toml": '[simulation]\nturns = "many"\n',
    "negative_sim.toml": "[simulation]\nconversations = -2\n",
    "huge_sim.toml": "[simulation]\nturns = 9223372036854775807\n",
    "role_kind.toml": '[simulation.judge]\nkind = "no_such_role"\n',
    "role_option.toml": '[simulation.judge]\nkind = "preference_judge"\n[simulation.judge.options]\ntemprature = 0.5\n',
    "role_labels.toml": '[simulation.judge]\nkind = "preference_judge"\n[simulation.judge.options]\nlabels = "emoji"\n',
    "role_template.toml": '[simulation.user]\nkind = "user_simulator"\n[simulation.user.options]\n'
    'system_prompt = "You are {persnoa}."\n',
    "role_template_open.toml": '[simulation.user]\nkind = "user_simulator"\n[simulation.user.options]\n'
    'system_prompt = "You are {unclosed"\n',
    "role_generation.toml": '[simulation.user]\nkind = "user_simulator"\n[simulation.user.generation]\n'
    "temperature = -1\n",
    "eval_unknown.toml": "[evaluation]\nturnz = 3\n",
    "eval_turns.toml": "[evaluation]\nturns = 0\n",
    "backend_timeout.toml": "[backend]\ntimeout_s = -1\n",
    "backend_unknown.toml": "[backend]\nnosuch = 1\n",
    "plugin.toml": 'plugins = ["no_such_plugin_module_xyz"]\n',
    "train_bad.yaml": "learning_rate: [\n",
    "train_unknown.yaml": "no_such_trl_field: 3\n",
    "good.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    + "\n",
    "sft.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    + "\n",
    "sft.val.jsonl": "{broken\n",
    "dpo_shape.jsonl": json.dumps({"prompt": "hi", "chosen": 3}) + "\n",
    "labels_bad.jsonl": "{nope\n",
    "adapter/adapter_config.json": "{not json",
    "empty_adapter/README.md": "no config here\n",
    "empty_eval_set/README.md": "no persona files here\n",
    "model_dir/README.md": "not a model\n",
    "replay_bad.json": "{nope",
    "big_persona.csv": "text\n" + "x" * 100 + "\n",
    "retries.toml": "[backend]\nmax_retries = 1100\n",
    "seed.toml": "seed = -5\n",
    "seed_true.toml": "seed = true\n",
    "true_sim.toml": "[simulation]\nturns = true\n",
    "false_eval.toml": "[evaluation]\nturns = false\n",
    "backends_prefix.toml": '[backends."locl:smollm2"]\ntimeout_s = 5\n',
    "backends_spaces.toml": '[backends." local:smollm2"]\ntimeout_s = 5\n',
    "sim_seed_text.toml": '[simulation]\nseed = "abc"\n',
    "sim_seed_true.toml": "[simulation]\nseed = true\n",
    "eval_seed_fraction.toml": "[evaluation]\nseed = 1.7\n",
    "dup_responders.toml": '[[simulation.responders]]\nname = "a"\n[[simulation.responders]]\nname = "a"\n',
}

# fmt: off
BAD_INPUTS: list[tuple[str, list[str]]] = [
    # global options and the config file
    ("config missing", ["--config", "missing.toml", "runs", "list"]),
    ("config is a folder", ["--config", "model_dir", "runs", "list"]),
    ("config undecodable", ["--config", "undecodable.toml", "runs", "list"]),
    ("config bad toml", ["--config", "bad.toml", "runs", "list"]),
    ("config bad yaml", ["--config", "bad.yaml", "runs", "list"]),
    ("config deep yaml", ["--config", "deep.yaml", "runs", "list"]),
    ("config unknown key", ["--config", "unknown_top.toml", "runs", "list"]),
    ("config unknown backend key", ["--config", "backend_unknown.toml", "runs", "list"]),
    ("config negative timeout", ["--config", "backend_timeout.toml", "runs", "list"]),
    ("config plugin missing", ["--config", "plugin.toml", "runs", "list"]),
    ("config unknown extension", ["--config", "a_file", "runs", "list"]),
    ("config symlink to an endless device", ["--config", "zero.toml", "runs", "list"]),
    ("config a fifo", ["--config", "fifo.toml", "runs", "list"]),
    ("config retries unbounded", ["--config", "retries.toml", "runs", "list"]),
    ("config seed negative", ["--config", "seed.toml", "runs", "list"]),
    ("config seed true", ["--config", "seed_true.toml", "runs", "list"]),
    ("config override of an unknown backend", ["--config", "backends_prefix.toml", "runs", "list"]),
    ("config override with spaces around its spec", ["--config", "backends_spaces.toml", "runs", "list"]),
    ("config show unknown command", ["config", "show", "train"]),
    ("config show bad config", ["--config", "bad.toml", "config", "show", "simulate"]),
    ("config show duplicate responders", ["--config", "dup_responders.toml", "config", "show", "simulate"]),
    ("runs delete unknown run", ["runs", "delete", "no-such-run"]),
    ("runs delete a known and an unknown run", ["runs", "delete", "RUN_DONE", "no-such-run"]),  # deletes nothing
    ("db in missing folder", ["--db", "nope/sub/aloe.db", "runs", "list"]),
    ("db not a database", ["--db", "notdb.db", "runs", "list"]),
    ("db is a folder", ["--db", "model_dir", "runs", "list"]),
    ("seed negative", ["--seed", "-1", "runs", "list"]),
    ("seed huge", ["--seed", "9223372036854775808", "runs", "list"]),
    ("seed not a number", ["--seed", "abc", "runs", "list"]),
    ("plugin missing", ["--plugin", "no_such_plugin_module_xyz", "runs", "list"]),
    ("unknown command", ["no-such-command"]),
    ("unknown flag", ["runs", "list", "--no-such-flag"]),
    ("unknown subcommand", ["personas", "no-such"]),
    # backends and chat
    ("check unknown prefix", ["backends", "check", "foo:bar"]),
    ("check malformed spec", ["backends", "check", "nocolon"]),
    ("check empty target", ["backends", "check", "hf:"]),
    ("check hf missing", ["backends", "check", "hf:/nonexistent/model"]),
    ("check hf not a model", ["backends", "check", "hf:model_dir"]),
    ("check local unknown", ["backends", "check", "local:no-such-model"]),
    ("check adapter missing", ["backends", "check", "local:smollm2+/nonexistent/adapter"]),
    ("check adapter without config", ["backends", "check", "local:smollm2+empty_adapter"]),
    ("check adapter corrupt config", ["backends", "check", "local:smollm2+adapter"]),
    ("check replay missing", ["backends", "check", "replay:/nonexistent.json"]),
    ("check replay corrupt", ["backends", "check", "replay:replay_bad.json"]),
    ("check max tokens zero", ["backends", "check", "local:smollm2", "--max-tokens", "0"]),
    ("check max tokens negative", ["backends", "check", "local:smollm2", "--max-tokens", "-5"]),
    ("chat unknown prefix", ["chat", "foo:bar", "hi"]),
    ("chat temperature negative", ["chat", "local:smollm2", "hi", "--temperature", "-1"]),
    ("chat max tokens negative", ["chat", "local:smollm2", "hi", "--max-tokens", "-5"]),
    ("chat seed negative", ["chat", "local:smollm2", "hi", "--seed", "-3"]),
    ("chat adapter missing", ["chat", "local:smollm2+/nonexistent", "hi"]),
    # personas
    ("import missing file", ["personas", "import", "missing.jsonl", "--kind", "profile"]),
    ("import folder", ["personas", "import", "model_dir", "--kind", "profile"]),
    ("import undecodable", ["personas", "import", "undecodable.jsonl", "--kind", "profile"]),
    ("import deep json", ["personas", "import", "deep.json", "--kind", "profile"]),
    ("import deep jsonl", ["personas", "import", "deep.jsonl", "--kind", "profile"]),
    ("import bad json line", ["personas", "import", "bad.jsonl", "--kind", "profile"]),
    ("import wrong shape", ["personas", "import", "shape.jsonl", "--kind", "profile"]),
    ("import null text", ["personas", "import", "nulls.jsonl", "--kind", "profile"]),
    ("import csv without text", ["personas", "import", "notext.csv", "--kind", "profile"]),
    ("import symlink to an endless device", ["personas", "import", "zero.jsonl", "--kind", "profile"]),
    ("import a fifo", ["personas", "import", "fifo.jsonl", "--kind", "profile"]),
    ("import bad kind", ["personas", "import", "sft.jsonl", "--kind", "hobby"]),
    ("import no files", ["personas", "import"]),
    ("generate target zero", ["personas", "generate", "--kind", "profile", "--target", "0"]),
    ("generate target negative", ["personas", "generate", "--kind", "profile", "--target", "-4"]),
    ("generate threshold zero", ["personas", "generate", "--kind", "profile", "--target", "5", "--threshold", "0"]),
    (
        "generate threshold above one",
        ["personas", "generate", "--kind", "profile", "--target", "5", "--threshold", "1.5"],
    ),
    ("generate examples zero", ["personas", "generate", "--kind", "profile", "--target", "5", "--examples", "0"]),
    ("generate candidates zero", ["personas", "generate", "--kind", "profile", "--target", "5", "--candidates", "0"]),
    ("generate rounds zero", ["personas", "generate", "--kind", "profile", "--target", "5", "--max-rounds", "0"]),
    (
        "generate saturation negative",
        ["personas", "generate", "--kind", "profile", "--target", "5", "--saturation-min", "-1"],
    ),
    (
        "generate max tokens negative",
        ["personas", "generate", "--kind", "profile", "--target", "5", "--max-tokens", "-5"],
    ),
    (
        "generate temperature negative",
        ["personas", "generate", "--kind", "profile", "--target", "5", "--temperature", "-1"],
    ),
    (
        "generate penalty zero",
        ["personas", "generate", "--kind", "profile", "--target", "5", "--repetition-penalty", "0"],
    ),
    (
        "generate unknown backend",
        ["personas", "generate", "--kind", "profile", "--target", "500", "--backend", "foo:bar", "--embedder", "none"],
    ),
    (
        "generate unknown embedder",
        ["personas", "generate", "--kind", "profile", "--target", "500", "--embedder", "no-such-embedder"],
    ),
    (
        "generate seeds missing",
        [
            "personas",
            "generate",
            "--kind",
            "profile",
            "--target",
            "500",
            "--seeds",
            "missing.jsonl",
            "--embedder",
            "no-such-embedder",
        ],
    ),
    ("generate no kind", ["personas", "generate", "--target", "5"]),
    ("list limit zero", ["personas", "list", "--limit", "0"]),
    ("list bad kind", ["personas", "list", "--kind", "hobby"]),
    ("stats unknown embedder", ["personas", "stats", "--embedder", "no-such-embedder"]),
    ("stats openai embedder down", ["personas", "stats", "--embedder", "openai:http://127.0.0.1:9/v1#emb"]),
    ("export to a folder", ["personas", "export", "--kind", "profile", "--out", "model_dir"]),
    ("export under a file", ["personas", "export", "--kind", "profile", "--out", "a_file/x.jsonl"]),
    ("export unknown extension", ["personas", "export", "--kind", "profile", "--out", "x.xml"]),
    ("export no kind", ["personas", "export", "--out", "x.jsonl"]),
    # simulate
    ("simulate conversations zero", ["simulate", "--conversations", "0"]),
    ("simulate conversations negative", ["simulate", "--conversations", "-1"]),
    ("simulate conversations huge", ["simulate", "--conversations", "9223372036854775808"]),
    ("simulate turns zero", ["simulate", "--turns", "0"]),
    ("simulate turns huge", ["simulate", "--turns", "9223372036854775808"]),
    ("simulate turns text", ["simulate", "--turns", "ten"]),
    ("simulate concurrency zero", ["simulate", "--concurrency", "0"]),
    ("simulate max calls zero", ["simulate", "--max-calls", "0"]),
    ("simulate max tokens negative", ["simulate", "--max-tokens", "-5"]),
    ("simulate seed negative", ["simulate", "--seed", "-1"]),
    ("simulate role all unknown prefix", ["simulate", "--conversations", "2", "--turns", "1", "--role", "all=foo:bar"]),
    ("simulate role judge unknown prefix", ["simulate", "--conversations", "2", "--role", "judge=foo:bar"]),
    ("simulate role unknown name", ["simulate", "--conversations", "2", "--role", "nosuch=local:smollm2"]),
    ("simulate role no spec", ["simulate", "--conversations", "2", "--role", "user="]),
    ("simulate role no equals", ["simulate", "--conversations", "2", "--role", "user"]),
    ("simulate role hf missing", ["simulate", "--conversations", "2", "--role", "all=hf:/nonexistent"]),
    ("simulate role adapter missing", ["simulate", "--conversations", "2", "--role", "all=local:smollm2+/nonexistent"]),
    ("simulate role adapter corrupt", ["simulate", "--conversations", "2", "--role", "all=local:smollm2+adapter"]),
    ("simulate role replay missing", ["simulate", "--conversations", "2", "--role", "all=replay:/nonexistent.json"]),
    ("simulate eval set missing", ["simulate", "--conversations", "2", "--eval-set", "/nonexistent/eval"]),
    ("simulate eval set empty", ["simulate", "--conversations", "2", "--eval-set", "empty_eval_set"]),
    ("simulate resume unknown", ["simulate", "--resume", "no-such-run"]),
    ("simulate resume with new turns", ["simulate", "--resume", "RUN_OPEN", "--turns", "3"]),
    ("simulate resume with a role", ["simulate", "--resume", "RUN_OPEN", "--role", "judge=foo:bar"]),
    ("simulate concurrency above the cap", ["simulate", "--concurrency", "20000"]),
    ("simulate resume not a simulation", ["simulate", "--resume", "RUN_DONE"]),
    ("simulate config unknown key", ["--config", "unknown_sim.toml", "simulate"]),
    ("simulate config wrong type", ["--config", "type_sim.toml", "simulate"]),
    ("simulate config negative", ["--config", "negative_sim.toml", "simulate"]),
    ("simulate config true for a number", ["--config", "true_sim.toml", "simulate"]),
    ("simulate config seed text", ["--config", "sim_seed_text.toml", "simulate"]),
    ("simulate config seed true", ["--config", "sim_seed_true.toml", "simulate"]),
    ("judge audit config seed text", ["--config", "sim_seed_text.toml", "judge", "audit", "--stage", "simulate"]),
    ("simulate config huge", ["--config", "huge_sim.toml", "simulate"]),
    ("simulate config role kind", ["--config", "role_kind.toml", "simulate", "--conversations", "2"]),
    ("simulate config role option", ["--config", "role_option.toml", "simulate", "--conversations", "2"]),
    ("simulate config label style", ["--config", "role_labels.toml", "simulate", "--conversations", "2"]),
    ("simulate config template", ["--config", "role_template.toml", "simulate", "--conversations", "2"]),
    ("simulate config template open", ["--config", "role_template_open.toml", "simulate", "--conversations", "2"]),
    ("simulate config generation", ["--config", "role_generation.toml", "simulate", "--conversations", "2"]),
    ("simulate too many conversations", ["simulate", "--conversations", "100000000"]),
    # trees and graph
    ("trees show unknown", ["trees", "show", "no-such-conversation"]),
    ("trees export unknown", ["trees", "export", "no-such-conversation"]),
    ("trees export unknown html", ["trees", "export", "no-such-conversation", "--format", "html"]),
    ("trees export bad format", ["trees", "export", "CONVERSATION", "--format", "svg"]),
    ("trees export to a folder", ["trees", "export", "CONVERSATION", "--out", "model_dir"]),
    ("trees export under a file", ["trees", "export", "CONVERSATION", "--out", "a_file/t.json"]),
    ("trees list unknown run", ["trees", "list", "--run", "no-such-run"]),
    ("graph show extra argument", ["graph", "show", "extra"]),
    # export
    ("export bad kind", ["export", "kto", "--out", "x.jsonl"]),
    ("export no out", ["export", "sft"]),
    ("export out is a folder", ["export", "sft", "--out", "model_dir"]),
    ("export out under a file", ["export", "sft", "--out", "a_file/x.jsonl"]),
    ("export unknown run", ["export", "sft", "--out", "x.jsonl", "--run", "no-such-run"]),
    ("export val fraction one", ["export", "sft", "--out", "x.jsonl", "--val-fraction", "1"]),
    ("export val fraction negative", ["export", "sft", "--out", "x.jsonl", "--val-fraction", "-0.1"]),
    ("export min turns zero", ["export", "sft", "--out", "x.jsonl", "--min-turns", "0"]),
    ("export bad branch", ["export", "sft", "--out", "x.jsonl", "--branch", "middle"]),
    ("export hub without token", ["export", "sft", "--out", "x.jsonl", "--push-to-hub", "me/data"]),
    ("export hf dataset is a file", ["export", "sft", "--out", "x.jsonl", "--hf-dataset", "a_file"]),
    ("export eval set missing", ["export", "sft", "--out", "x.jsonl", "--eval-set", "/nonexistent/eval"]),
    ("export nothing to export", ["export", "dpo", "--out", "x.jsonl", "--run", "RUN_DONE"]),
    # train
    ("train bad method", ["train", "kto", "--data", "good.jsonl", "--out", "ad"]),
    ("train data missing", ["train", "sft", "--data", "missing.jsonl", "--out", "ad"]),
    ("train data folder", ["train", "sft", "--data", "model_dir", "--out", "ad"]),
    ("train data undecodable", ["train", "sft", "--data", "undecodable.jsonl", "--out", "ad"]),
    ("train data bad json", ["train", "sft", "--data", "bad.jsonl", "--out", "ad"]),
    ("train data deep", ["train", "sft", "--data", "deep.jsonl", "--out", "ad"]),
    ("train data empty", ["train", "sft", "--data", "empty.jsonl", "--out", "ad"]),
    ("train data wrong shape", ["train", "sft", "--data", "shape.jsonl", "--out", "ad"]),
    ("train dpo wrong shape", ["train", "dpo", "--data", "dpo_shape.jsonl", "--out", "ad"]),
    ("train bad val file", ["train", "sft", "--data", "sft.jsonl", "--out", "ad"]),
    ("train epochs negative", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--epochs", "-1"]),
    ("train epochs zero", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--epochs", "0"]),
    ("train max steps zero", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--max-steps", "0"]),
    ("train beta zero", ["train", "dpo", "--data", "good.jsonl", "--out", "ad2", "--beta", "0"]),
    ("train lora r zero", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--lora-r", "0"]),
    ("train dropout one", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--lora-dropout", "1"]),
    ("train max length zero", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--max-length", "0"]),
    ("train trl no equals", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--trl", "learning_rate"]),
    ("train batch size zero", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--batch-size", "0"]),
    ("train batch size word", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--batch-size", "big"]),
    ("train batch size twice", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--batch-size", "4",
                                "--trl", "per_device_train_batch_size=4"]),
    ("train config missing", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--config", "missing.yaml"]),
    ("train config bad yaml", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--config", "train_bad.yaml"]),
    ("train config undecodable", ["train", "sft", "--data", "good.jsonl", "--out", "ad2",
                                  "--config", "undecodable.toml"]),
    ("train base unknown", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--base", "foo:bar"]),
    ("train base is an adapter", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--base",
                                  "local:smollm2+adapter"]),
    ("train base hf missing", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--base", "hf:/nonexistent"]),
    ("train init adapter missing", ["train", "sft", "--data", "good.jsonl", "--out", "ad2", "--base", "hf:TINY",
                                    "--init-adapter", "/nonexistent/adapter"]),
    ("train out is a file", ["train", "sft", "--data", "good.jsonl", "--out", "a_file", "--base", "hf:TINY"]),
    (
        "train init adapter corrupt",
        ["train", "sft", "--data", "good.jsonl", "--out", "ad3", "--base", "hf:TINY", "--init-adapter", "adapter"],
    ),
    (
        "train trl unknown field",
        ["train", "sft", "--data", "good.jsonl", "--out", "ad3", "--base", "hf:TINY", "--trl", "no_such_field=1"],
    ),
    # judge audit
    ("audit bad stage", ["judge", "audit", "--stage", "train"]),
    ("audit role unknown name", ["judge", "audit", "--role", "inducer=local:smollm2"]),
    ("audit role unknown prefix", ["judge", "audit", "--role", "judge=foo:bar"]),
    ("audit role hf missing", ["judge", "audit", "--role", "judge=hf:/nonexistent"]),
    ("audit personas zero", ["judge", "audit", "--personas", "0"]),
    ("audit concurrency zero", ["judge", "audit", "--concurrency", "0"]),
    ("audit labels missing", ["judge", "audit", "--labels", "missing.jsonl", "--role", "judge=foo:bar"]),
    ("audit labels bad", ["judge", "audit", "--labels", "labels_bad.jsonl"]),
    ("audit eval set missing", ["judge", "audit", "--eval-set", "/nonexistent/eval"]),
    ("audit eval stage paper exact", ["judge", "audit", "--paper-exact"]),
    # eval
    ("eval no model", ["eval"]),
    ("eval unknown prefix", ["eval", "--model", "foo:bar"]),
    ("eval hf missing", ["eval", "--model", "hf:/nonexistent"]),
    ("eval adapter missing", ["eval", "--model", "local:smollm2+/nonexistent"]),
    ("eval adapter corrupt", ["eval", "--model", "local:smollm2+adapter"]),
    ("eval replay without run", ["eval", "--model", "local:smollm2", "--mode", "replay"]),
    ("eval replay unknown run", ["eval", "--model", "local:smollm2", "--mode", "replay", "--replay-run", "no-such"]),
    ("eval replay run in live mode", ["eval", "--model", "local:smollm2", "--replay-run", "no-such"]),
    ("eval eval set missing", ["eval", "--model", "local:smollm2", "--eval-set", "/nonexistent/eval"]),
    ("eval eval set empty", ["eval", "--model", "local:smollm2", "--eval-set", "empty_eval_set"]),
    ("eval personas zero", ["eval", "--model", "local:smollm2", "--personas", "0"]),
    ("eval turns zero", ["eval", "--model", "local:smollm2", "--turns", "0"]),
    ("eval turns huge", ["eval", "--model", "local:smollm2", "--turns", "9223372036854775808"]),
    ("eval concurrency zero", ["eval", "--model", "local:smollm2", "--concurrency", "0"]),
    ("eval bad baseline", ["eval", "--model", "local:smollm2", "--baseline", "cheat"]),
    ("eval bad mode", ["eval", "--model", "local:smollm2", "--mode", "offline"]),
    ("eval judge unknown prefix", ["eval", "--model", "local:smollm2", "--role", "judge=foo:bar"]),
    ("eval role unknown name", ["eval", "--model", "local:smollm2", "--role", "inducer=local:smollm2"]),
    ("eval max tokens negative", ["eval", "--model", "local:smollm2", "--max-tokens", "-1"]),
    ("eval resume unknown", ["eval", "--resume", "no-such-run"]),
    ("eval resume with a model", ["eval", "--resume", "RUN_DONE", "--model", "local:smollm2"]),
    ("eval concurrency above the cap", ["eval", "--model", "local:smollm2", "--concurrency", "20000"]),
    ("eval resume not an eval", ["eval", "--resume", "RUN_DONE"]),
    ("eval config unknown key", ["--config", "eval_unknown.toml", "eval", "--model", "local:smollm2"]),
    ("eval config false for a number", ["--config", "false_eval.toml", "eval", "--model", "local:smollm2"]),
    ("eval config seed fraction", ["--config", "eval_seed_fraction.toml", "eval", "--model", "local:smollm2"]),
    ("eval config turns zero", ["--config", "eval_turns.toml", "eval", "--model", "local:smollm2"]),
    # compare and report
    ("compare unknown runs", ["compare", "no-such-a", "no-such-b"]),
    ("compare not eval runs", ["compare", "RUN_DONE", "RUN_OPEN"]),
    ("compare one run", ["compare", "RUN_DONE"]),
    ("report no runs", ["report", "--out", "rep"]),
    ("report unknown run", ["report", "no-such-run", "--out", "rep"]),
    ("report not an eval run", ["report", "RUN_DONE", "--out", "rep"]),
    ("report out is a file", ["report", "RUN_DONE", "--out", "a_file"]),
    ("report out under a file", ["report", "RUN_DONE", "--out", "a_file/rep"]),
    # viewer, demo, runs
    ("view port too big", ["view", "--port", "99999"]),
    ("view port negative", ["view", "--port", "-1"]),
    ("view db missing", ["view", "--db", "missing.db"]),
    ("view db not a database", ["view", "--db", "notdb.db"]),
    ("view db with uri characters", ["view", "--db", "q/a?b.db"]),
    ("view db folder", ["view", "--db", "model_dir"]),
    ("view remote host refused", ["view", "--host", "0.0.0.0"]),
    ("view host unresolvable", ["view", "--host", "no-such-host.invalid", "--allow-remote"]),
    ("demo out is a file", ["demo", "--out", "a_file"]),
    ("demo out under a file", ["demo", "--out", "a_file/demo"]),
    ("demo with --db", ["--db", "other.db", "demo", "--out", "demo_out"]),
    ("runs limit zero", ["runs", "list", "--limit", "0"]),
    ("runs limit negative", ["runs", "list", "--limit", "-1"]),
]
# fmt: on


def _snapshot(db: Path) -> tuple[dict[str, int], dict[str, tuple[str, str | None]]]:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
        runs = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, status, error FROM runs")}
    finally:
        conn.close()
    return counts, runs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict[str, str]]:
    """A folder with the bad files and a database holding a pool, a finished run and an unfinished one."""
    root = tmp_path_factory.mktemp("bad-input")
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
    for name in ("zero.toml", "zero.jsonl"):  # endless: reading it whole would fill the memory
        (root / name).symlink_to("/dev/zero")
    for name in ("fifo.toml", "fifo.jsonl"):  # reading it would block forever
        os.mkfifo(root / name)
    store = Store(root / "aloe.db")
    done = store.start_run("aloe backends check", {}, 0)
    store.finish_run(done)
    open_run = seeded_run(store, 2, 2)
    store.finish_run(open_run, "interrupted")
    conversation = store.conn.execute("SELECT id FROM conversations LIMIT 1").fetchone()[0]
    store.close()
    return root, {
        "RUN_DONE": done,
        "RUN_OPEN": open_run,
        "CONVERSATION": conversation,
        "hf:TINY": f"hf:{tiny_model_dir}",
    }


@pytest.mark.parametrize(("case", "args"), BAD_INPUTS, ids=[case for case, _ in BAD_INPUTS])
def test_bad_input_is_one_clean_error(workspace, monkeypatch, case, args):
    root, names = workspace
    monkeypatch.chdir(root)
    monkeypatch.setenv("ALOE_DB", str(root / "aloe.db"))
    monkeypatch.setenv("ALOE_LOG_DIR", str(root / "logs"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = [names.get(arg, arg) for arg in args]
    before = _snapshot(root / "aloe.db")
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    stderr = result.stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0, f"{case}: exit 0\n{stderr}\n{result.stdout}"
    assert len(errors) == 1, f"{case}: expected one error line, got:\n{stderr}"
    assert "Traceback" not in stderr + result.stdout, f"{case}:\n{stderr}"
    assert not errors[0].startswith("error: unexpected "), f"{case}: a crash, not a clean error:\n{errors[0]}"
    counts, runs = _snapshot(root / "aloe.db")
    for run_id, state in before[1].items():
        assert runs[run_id] == state, f"{case}: run {run_id} changed from {state} to {runs[run_id]}"
    new_runs = {k: v for k, v in runs.items() if k not in before[1]}
    for run_id, (status, error) in new_runs.items():
        assert status == "failed" and error, f"{case}: run {run_id} left {status!r} ({error!r})"
    if not new_runs:
        assert counts == before[0], f"{case}: rows changed without a failed run: {before[0]} -> {counts}"
    assert not (root / "q").exists(), f"{case}: created a stray folder"


def test_the_matrix_covers_every_command():
    def command(args: list[str]) -> str:
        return next(a for i, a in enumerate(args) if not a.startswith("-") and not (i and args[i - 1].startswith("--")))

    commands = {command(args) for _, args in BAD_INPUTS}
    assert len(BAD_INPUTS) >= 150
    assert set(cli.commands) <= commands, set(cli.commands) - commands


@pytest.mark.parametrize(
    "args",
    [
        ["export", "sft", "--out", "x.jsonl", "--val-fraction", "nan"],
        ["train", "dpo", "--data", "x.jsonl", "--out", "a", "--beta", "inf"],
        ["train", "sft", "--data", "x.jsonl", "--out", "a", "--epochs", "nan"],
        ["train", "sft", "--data", "x.jsonl", "--out", "a", "--lora-dropout", "nan"],
        ["train", "grpo", "--out", "a", "--profile-weight", "inf"],
        ["personas", "generate", "--threshold", "nan"],
        ["chat", "replay:x.json", "hi", "--temperature", "nan"],
    ],
    ids=lambda args: f"{args[0]}-{args[-2]}-{args[-1]}",
)
def test_nan_and_infinity_are_usage_errors_naming_the_flag(tmp_path, monkeypatch, args):
    # They pass click's range comparisons (nan every one, inf an open upper end) and failed later.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "aloe.db"), *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[-2]}': '{args[-1]}' is not a finite number." in result.output
    assert not (tmp_path / "aloe.db").exists()


def test_arguments_and_chat_lines_that_are_not_utf8_get_one_line(run_aloe, tmp_path):
    # The shell passes such bytes through as lone surrogates, which SQLite and the HTTP clients refuse.
    for args, shown in ((["trees", "show", "caf\udce9"], "caf\\xe9"),
                        (["personas", "import", "caf\udce9.txt", "--kind", "profile"], "caf\\xe9.txt")):  # fmt: skip
        proc = run_aloe(*args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr == f"error: argument '{shown}' is not valid UTF-8 text (rename the file or retype it)\n"
    # In-process (click's runner passes args= by keyword), any lone surrogate: the same one line.
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "aloe.db"), "trees", "show", "x\ud800"])
    assert result.exit_code == 2 and "error: argument 'x\\ud800' is not valid UTF-8 text" in result.output
    (tmp_path / "replay.json").write_text('["hello back", "again"]')
    strict = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # as under an en_US.UTF-8 locale
    chat = subprocess.run([sys.executable, "-m", "aloekit.cli", "chat", "replay:replay.json"], cwd=tmp_path,
                          input=b"hello\n\xff\xfe\nagain\n", capture_output=True, timeout=300, env=strict)  # fmt: skip
    out, err = chat.stdout.decode(), chat.stderr.decode()
    assert chat.returncode == 0 and "Traceback" not in err, err
    assert "that line is not valid UTF-8 text; type it again" in err
    assert "bot> hello back" in out and "bot> again" in out


def test_an_audit_of_one_persona_is_a_usage_error_before_any_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "aloe.db"), "judge", "audit", "--personas", "1"])
    assert result.exit_code == 2 and "Invalid value for '--personas': 1 is not in the range 2<=x" in result.output
    assert not (tmp_path / "aloe.db").exists()  # it used to record a failed run
