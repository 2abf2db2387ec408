"""Every command of README.md, run for real, its documented output checked in substance.

How the README is read:

- Every ```console block (fences may be indented, as in a list item) is one test, named by its README line and
  first command. A line starting with ``$ `` is a command (``\\`` continues it on the next line; `` # ...`` after
  whitespace, outside quotes, is a comment); the lines after it, up to the next ``$``, are its documented output.
  Leading ``NAME=value`` words are environment variables. Every line of a ```bash block is a command too.
- Commands run in README order inside one temporary folder with its own ``ALOE_DB=aloe.db``, through
  ``python -m aloekit.cli`` (the ``aloe`` entry point), so a later command sees what an earlier one wrote. A block
  that needs what another block made first (trees to export, a database to view) runs that block's commands
  first (``REQUIRES``).
- What cannot run here as written is rewritten by the one ``SUBSTITUTIONS`` table (remote models go to a stub
  OpenAI-compatible server on 127.0.0.1, sizes shrink, the README's own run ids become this session's), or, where
  it cannot run at all, listed in ``SKIP`` with the reason. Files a command names but the README does not show are
  in ``FILES``; an ``aloe.toml`` a command uses is the nearest ```toml block above it that starts with
  ``# aloe.toml``. ``test_every_readme_command_is_run_or_skipped`` fails on a README command no table handles and
  on a table entry that no longer matches the README.
- ``a|b|c`` runs once per choice; an optional ``[--flag value]`` runs without and with it.
- ``aloe chat SPEC`` without a message is interactive: it gets one message, then the empty line that ends it.
  ``aloe view`` serves until stopped: it runs in the background on ``--port 0`` until it prints its URL (with a
  deadline, no fixed sleep), ``GET /`` must answer 200 with this folder's runs, then it is terminated.
- The embedded SmolLM2 stays only where it is cheap (``backends check``, a short ``chat``): those blocks run a
  second time, marked ``integration`` and ``slow``, with the real model; the fast run puts the stub there too.

"Matches in substance" (``expected_pattern``), for each documented output line:

- the command must exit 0 (non-zero when the README shows an ``error:`` line) without a traceback, and every
  ``--out``/``--hf-dataset`` path it names must exist afterwards (and every file its comment names, for an
  ``--out`` folder);
- a ``...`` line elides output and an empty line is not checked; the substitutions made in the command are made
  in its documented output too (``local:smollm2`` in a line becomes the stub's spec when the command used the stub);
- a line that shows generated text, one ending in ``...`` (a truncated preview) or a ``reply:`` line, is compared
  by its label only: the leading ``->`` marker, ``[...]`` tags and one ``word:`` (``[turn 1] USER:``,
  ``[preferred, hint]``, ``-> [rejected]``, ``inducer:``, ``reply:``);
- in every other line, run ids (``20261127-124525-95c25a``) and numbers (counts, timings, scores, ports, dates,
  with an optional sign) are wildcards, any run of whitespace matches any other, a progress bar's ``━`` run
  matches any bar, and the rest must be there as written;
- each line must match some line the command printed (stdout or stderr), anywhere: order is not checked, so a
  warning on stderr and a result on stdout need no interleaving. The stub answers deterministically and the CLI
  is seeded, so the trees the fast run grows have the labels the README shows.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aloekit.cli import cli
from aloekit.testing import StubOpenAIServer, role_aware_reply

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAPER_DATA = REPO.parent / "shared" / "aloe-paper-data"
RUN_ID = r"\d{8}-\d{6}-[0-9a-f]{6}"
COMMAND_TIMEOUT_S = 600  # generous: the suite runs on a loaded 2-core machine
SERVER_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Sub:
    """One rewrite of a README command: where it applies, what changes, and why."""

    where: str
    """Regex searched in the command (as rewritten so far); the entry applies only where it matches."""
    find: str
    """Regex replaced in the command; ``$`` appends."""
    replace: str
    """Replacement; ``{stub}``, ``{tiny}``, ``{paper_data}``, ``{simulate_run}``, ``{eval_run_1}``,
    ``{eval_run_2}`` and ``{previous_eval_options}`` are filled from the session, ``\\1`` from the match."""
    why: str
    output: tuple[str, str] | None = None
    """(regex, replacement) made in the documented output; by default ``find``/``replace`` unless ``find`` is ``$``."""
    integration: bool = True
    """False: the integration run keeps the README's text (the real embedded model)."""


# One table for every rewrite of a README command, applied in this order.
SUBSTITUTIONS: list[Sub] = [
    # --- the README's own ids and elisions become this session's values
    Sub("", rf"\b{RUN_ID}-(\d{{4}})\b", r"{simulate_run}-\1",
        "the README shows a conversation of its author's run; here, the same conversation of this folder's "
        "last simulate run"),
    Sub("", r"\bRUN-(\d{4})\b", r"{simulate_run}-\1", "RUN-0000: conversation 0000 of a simulate run"),
    Sub("", r"\bRUN_A\b", "{eval_run_1}", "RUN_A: the first evaluation run of the block"),
    Sub("", r"\bRUN_B\b", "{eval_run_2}", "RUN_B: the second evaluation run of the block"),
    Sub("", r"\bRUN\b(?!-)", "{eval_run_1}", "--replay-run RUN: replay the user side of the block's first eval run"),
    Sub("", r"=\.\.\.(?=\s|$)", "={stub}", "`--role judge=...` elides the spec: the stub"),
    Sub(r"^aloe eval ", r"(?<=\s)\.\.\.$", "{previous_eval_options}",
        "`aloe eval --model M --baseline oracle ...`: `...` stands for the options of the eval above"),
    # --- remote and slow models go to the stub server
    Sub("", r"openai:(?:https?://[^#\s]+#)?[\w./-]+", "{stub}",
        "OpenAI, vLLM and Ollama specs: no key and no network here; the stub speaks the same API"),
    Sub(r"^aloe (?:backends check|chat) local:smollm2(?:\s|$)", r"local:smollm2(?=\s|$)", "{stub}",
        "a check or a short chat is cheap on the embedded model: the integration run keeps it, the fast run "
        "checks the same output format on the stub", integration=False),
    Sub(r"^aloe (?:train |chat local:smollm2\+)", r"local:smollm2", "hf:{tiny}",
        "LoRA training on SmolLM2 takes minutes on CPU; the tiny 2-layer model (tests/conftest.py) trains in "
        "seconds, and the chat with the trained adapter needs the adapter's base"),
    Sub(r"^aloe eval ", r"local:smollm2(?:\+\S+)?", "{stub}",
        "the model under test: an evaluation on the embedded model takes minutes per persona"),
    Sub(r"^aloe judge audit ", r"local:smollm2", "{stub}", "a judge audit on the embedded model takes minutes"),
    Sub(r"^aloe simulate (?!.*--role)", "$", " --role all={stub}",
        "every role defaults to local:smollm2: five roles x every turn take minutes on CPU",
        output=("local:smollm2", "{stub}")),
    Sub(r"^aloe personas generate (?!.*--backend)", "$", " --backend {stub}",
        "the generator defaults to local:smollm2 (1,500 tokens a round); the stub answers with new profiles"),
    Sub(r"^aloe judge audit (?!.*--role user=)", "$", " --role user={stub}",
        "the audit's user simulator defaults to local:smollm2"),
    # --- sizes
    Sub("", r"--conversations \d+", "--conversations 2", "small: 2 conversations grow every kind of node"),
    Sub("", r"--turns \d+", "--turns 2", "small: turn 2 is the first with a history"),
    Sub("", r"--personas \d+", "--personas 2", "small: 2 personas give every metric and test a value"),
    Sub(r"^aloe (?:eval|judge audit) (?!.*--personas)", "$", " --personas 2",
        "eval and judge audit default to every persona of the set (8 to 100)"),
    Sub("", r"--max-steps \d+", "--max-steps 2", "a few optimizer steps show that training runs"),
    # --- places
    Sub("", r"\.\./shared/aloe-paper-data", "{paper_data}",
        "the paper's eval files beside the repository (or the same format written from the built-in set); the "
        "README's path is relative to the repository, the test runs in a temporary folder"),
    Sub(r"^aloe view(?!.*--port)", "$", " --port 0", "port 8765 may be taken: let the system pick one"),
]  # fmt: skip

# README commands that are not run, with the reason. Keys are the command as written (comment removed).
SKIP: dict[str, str] = {
    "make demo": "installs the venv and runs the full demo (32 minutes on 2 cores); tests/integration/test_demo.py "
    "runs `aloe demo --quick`",
    "make test": "runs the whole test suite, this file included",
    "accelerate launch --config_file \"$(python -c 'import aloekit.training, pathlib; print(pathlib.Path("
    'aloekit.training.__file__).parent / "accelerate" / "deepspeed_zero3.yaml")\')" -m aloekit.training dpo '
    "--data data/dpo.jsonl --base hf:/models/Qwen2.5-7B-Instruct --out adapters/dpo": "DeepSpeed ZeRO-3 on several "
    "GPUs with a 7B model; not installed, no GPU here",
}

# Console blocks without a command: the printed output of something run elsewhere, with why it is not run here.
OUTPUT_ONLY: dict[str, str] = {
    "[2/8] judge audits: known-answer probes from 3 eval personas": "what `aloe demo --quick` printed (11 minutes "
    "on the embedded model); tests/integration/test_demo.py runs it and checks its outputs",
}

# Files a command names that the README does not show: written before the command runs.
FILES: dict[str, str] = {
    # Seven personalities of "our own", as the documented `7 added` says.
    "my_personalities.txt": "\n".join(
        [
            "She is wry and unhurried, answering questions with questions. She is loyal to old friends.",
            "He is boisterous and sentimental, crying at weddings and laughing at funerals.",
            "She is exacting about grammar and gentle about everything else.",
            "He is a worrier who plans three routes to everywhere and still leaves early.",
            "She is flamboyant, dressing for every occasion as if it were a party.",
            "He is terse in writing but talks for hours about birds once he trusts you.",
            "She is stubbornly cheerful, refusing to let a rainy day change her plans.",
        ]
    )
    + "\n",
    # Reference labels in the format the README describes for `--labels` (one row of each answer).
    "mine.jsonl": "".join(
        json.dumps(row) + "\n"
        for row in [
            {"profile": "He is a 30-year-old baker who lives alone.", "personality": "He is shy and precise.",
             "user_message": "Any ideas for my weekend?",
             "replies": ["A quiet early-morning baking class might suit you.", "Throw a huge loud party!"],
             "preferred": 0},
            {"profile": "She is a 25-year-old DJ in a big city.", "personality": "She is loud and sociable.",
             "user_message": "What should I do tonight?",
             "replies": ["Stay in and read a book.", "Find the busiest club and dance till dawn!"],
             "preferred": 1},
        ]
    ),
}  # fmt: skip

# Blocks that need another block's results first: block (by its first command) -> commands run before it.
REQUIRES: dict[str, list[str]] = {
    # Exports and training read the trees that the simulation section grows.
    "aloe export dpo --out data/dpo.jsonl --val-fraction 0.1": ["aloe simulate --conversations 2 --turns 2"],
    # The viewer refuses a missing database, and the tree export needs a conversation.
    "aloe view": ["aloe simulate --conversations 2 --turns 2"],
}

# What the stub's persona generator writes: different people, so the similarity filter keeps them.
GENERATED_PROFILES = [
    "He is a 63-year-old lighthouse keeper on a remote island who paints seascapes and keeps bees in the dunes.",
    "She is a 29-year-old e-sports commentator in Seoul who streams at night and collects vinyl records.",
    "He is a 74-year-old retired watchmaker in Geneva who repairs antique clocks for free and plays chess by post.",
    "She is a 36-year-old wildfire firefighter in Oregon, a single mother of twins, who trains sled dogs in winter.",
    "He is a 22-year-old theology student in Rome who sings in a Gregorian choir and restores old bicycles.",
    "She is a 55-year-old cheese maker on an Alpine farm who breeds goats and writes detective novels at night.",
    "He is a 41-year-old cargo pilot based in Dubai who builds racing drones with his son.",
    "She is a 17-year-old robotics champion in Nairobi who codes phone apps for local farmers.",
    "He is an 85-year-old former jazz drummer in New Orleans who teaches rhythm to kids in his church hall.",
    "She is a 48-year-old tax lawyer in Frankfurt who races sailboats on the Baltic and speaks five languages.",
    "He is a 33-year-old tattoo artist in Melbourne who surfs at dawn and volunteers at a reptile sanctuary.",
    "She is a 26-year-old glaciologist in Reykjavik who winters in a research hut and knits with Icelandic wool.",
]


# ----------------------------------------------------------------------------------------------- parsing


@dataclass
class Command:
    """One README command and the output documented under it."""

    line: int
    text: str
    comment: str
    output: list[str] = field(default_factory=list)


@dataclass
class Block:
    """One fenced block of the README."""

    line: int
    lang: str
    body: list[str]
    commands: list[Command]

    @property
    def name(self) -> str:
        """The test id: README line and first command (or first line)."""
        first = self.commands[0].text if self.commands else (self.body[0] if self.body else "")
        return f"L{self.line}: {first[:60]}"


def split_comment(text: str) -> tuple[str, str]:
    """Split a shell line at a ``#`` that follows whitespace outside quotes (``v1#Model`` is not a comment)."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def _logical_lines(body: list[str], start: int) -> Iterator[tuple[int, str]]:
    """Join ``\\`` continuations; yields (README line, joined line)."""
    i = 0
    while i < len(body):
        first, text = start + i, body[i]
        while text.rstrip().endswith("\\") and i + 1 < len(body):
            i += 1
            text = text.rstrip()[:-1].rstrip() + " " + body[i].strip()
        yield first, text
        i += 1


def parse_readme(text: str) -> list[Block]:
    """Every fenced block of the README, with the commands of console and bash blocks."""
    blocks: list[Block] = []
    lines = text.splitlines()
    fence = re.compile(r"^(\s*)```(\w*)\s*$")
    i = 0
    while i < len(lines):
        match = fence.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang, start = match.group(1), match.group(2), i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and not fence.match(lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        commands: list[Command] = []
        if lang == "console":
            for number, line in _logical_lines(body, start + 1):
                if line.startswith("$ "):
                    commands.append(Command(number, *split_comment(line[2:].strip())))
                elif commands:
                    commands[-1].output.append(line)
        elif lang == "bash":
            for number, line in _logical_lines(body, start + 1):
                command, comment = split_comment(line.strip())
                if command:
                    commands.append(Command(number, command, comment))
        blocks.append(Block(start, lang, body, commands))
    return blocks


BLOCKS = parse_readme(README.read_text())
CONSOLE_BLOCKS = [b for b in BLOCKS if b.lang == "console" and b.commands]


def find_block(first_command: str) -> Block:
    """The console block whose first command is ``first_command``."""
    matches = [b for b in CONSOLE_BLOCKS if b.commands[0].text == first_command]
    assert len(matches) == 1, f"no single README console block starts with {first_command!r}"
    return matches[0]


def toml_for(block: Block, name: str) -> str | None:
    """The nearest ```toml block above ``block`` that starts with ``# NAME``."""
    candidates = [b for b in BLOCKS if b.lang == "toml" and b.line < block.line and b.body]
    for toml in reversed(candidates):
        if re.match(rf"#\s*{re.escape(name)}\b", toml.body[0]):
            return "\n".join(toml.body) + "\n"
    return None


# ------------------------------------------------------------------------------------------ substitutions


def variants(text: str) -> list[str]:
    """Expand ``a|b|c`` (each choice) and an optional ``[--flag value]`` (without, then with)."""
    optional = re.search(r"(?:^|\s)\[(-[^\]]*)\](?=\s|$)", text)
    if optional:
        without = (text[: optional.start()] + text[optional.end() :]).strip()
        with_ = text[: optional.start()] + " " + optional.group(1) + text[optional.end() :]
        return variants(without) + variants(with_.strip())
    choice = re.search(r"(?<=\s)(\w+(?:\|\w+)+)(?=\s|$)", text)
    if choice:
        return [v for option in choice.group(1).split("|")
                for v in variants(text[: choice.start()] + option + text[choice.end() :])]  # fmt: skip
    return [text]


def rewrite(
    text: str, output: list[str], values: Callable[[str], str], *, integration: bool, used: set[int] | None = None
) -> tuple[str, list[str]]:
    """Apply ``SUBSTITUTIONS`` to a command and, where it changed the command, to its documented output."""

    def fill(template: str, match: re.Match[str] | None) -> str:
        expanded = match.expand(template) if match else template
        return re.sub(r"\{(\w+)\}", lambda m: values(m.group(1)), expanded)

    for index, sub in enumerate(SUBSTITUTIONS):
        if (integration and not sub.integration) or not re.search(sub.where, text):
            continue
        if sub.find == "$":
            text += fill(sub.replace, None)
            changed = True
        else:
            new = re.sub(sub.find, lambda m, s=sub: fill(s.replace, m), text)
            changed, text = new != text, new
        if not changed:
            continue
        if used is not None:
            used.add(index)
        out_find, out_replace = sub.output or ((sub.find, sub.replace) if sub.find != "$" else ("", ""))
        if out_find:
            output = [re.sub(out_find, lambda m, r=out_replace: fill(r, m), line) for line in output]
    return text, output


# ------------------------------------------------------------------------------------------ normalisation


NUMBER = r"-?\d+(?:\.\d+)*"
_TOKENS = re.compile(rf"(?P<run>{RUN_ID})|(?P<number>(?<![A-Za-z\d])-?\d+(?:\.\d+)*)|(?P<bar>[━╸╺]+)|(?P<space>\s+)")
_LABEL = re.compile(r"^(?:->\s*)?(?:\[[^\]]*\]\s*)*(?:[A-Za-z]\w*:)?")


def _pattern(text: str) -> str:
    """A regex for ``text`` with run ids, numbers, progress bars and whitespace made wildcards."""
    parts, last = [], 0
    for match in _TOKENS.finditer(text):
        parts.append(re.escape(text[last : match.start()]))
        kind = match.lastgroup
        parts.append({"run": RUN_ID, "number": NUMBER, "bar": r"[━╸╺]+", "space": r"\s+"}[kind or "space"])
        last = match.end()
    parts.append(re.escape(text[last:]))
    return "".join(parts)


def expected_pattern(line: str) -> re.Pattern[str] | None:
    """The regex a documented output line must fully match (None: not checked). Rules: module docstring."""
    text = line.strip()
    if not text or text == "...":
        return None
    if text.endswith("...") or text.startswith("reply:"):  # generated text: compare the label only
        label = _LABEL.match(text)
        assert label and label.group().strip(), f"no label in a preview line of the README: {line!r}"
        return re.compile(_pattern(label.group().strip()) + r"(?:\s.*)?")
    return re.compile(_pattern(text))


def test_normalisation_keeps_substance() -> None:
    """The rules accept other numbers, ids and model text, and refuse a changed word, label or format."""
    tokens = expected_pattern("tokens:  43 prompt + 7 completion")
    assert tokens and tokens.fullmatch("tokens: 11 prompt + 13 completion")
    assert not tokens.fullmatch("tokens: 11 prompt, 13 completion")
    run = expected_pattern("run 20261127-124525-95c25a: 2 complete; 4 turns saved, 0 without a valid judge verdict")
    assert run and run.fullmatch(
        "run 20991231-000000-abcdef: 12 complete; 40 turns saved, 3 without a valid judge verdict"
    )
    assert not run.fullmatch("run 20991231-000000-abcdef: 12 complete; 40 turns saved")
    preview = expected_pattern("  -> [rejected] The perfect answer to this classic question. My name is Mira...")
    assert preview and preview.fullmatch("-> [rejected] That sounds lovely!")
    assert not preview.fullmatch("[rejected] That sounds lovely!") and not preview.fullmatch("-> [preferred] Hi")
    user = expected_pattern("[turn 1] USER: I'm a 42-year-old cat lover and the founder of a marine...")
    assert user and user.fullmatch("[turn 3] USER: Just got back!") and not user.fullmatch("[turn 3] BOT: Hi")
    bar = expected_pattern("profile pool ━━━━━━━━━━━ 26/26 round 2, accepted 6/8 (75%) 0:00:55")
    assert bar and bar.fullmatch("profile pool ━━━━━━━━━━━━━━━━━━━      21/26 round 4, accepted 1/1 (100%) 0:00:14")
    diff = expected_pattern("- AVG difference (B - A): -0.085 [-0.153, -0.045]")
    assert diff and diff.fullmatch("- AVG difference (B - A): 0.000 [0.000, 0.000]")
    assert expected_pattern("...") is None and expected_pattern("") is None


# ------------------------------------------------------------------------------------------- running


def readme_reply(messages: list[dict[str, Any]]) -> str:
    """The stub's answers: ``role_aware_reply`` for the ALOE roles, new numbered profiles for the generator."""
    last = str(messages[-1].get("content", "")) if messages else ""
    if last.startswith("Here are some examples"):  # aloekit.personas.generate.PROMPT_TEMPLATE
        wanted = int(m.group(1)) if (m := re.search(r"Write (\d+) new ones", last)) else 6
        shown = set(re.findall(r"^\d+\. (.*)$", last, re.M))
        fresh = [p for p in GENERATED_PROFILES if p not in shown][:wanted]
        return "\n".join(f"{i}. {text}" for i, text in enumerate(fresh, start=1))
    return role_aware_reply(messages)


def aloe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a README command: no ALOE_* settings of the caller, this folder's database."""
    keep = {"ALOE_CACHE_DIR", "ALOE_SMOLLM2_GGUF"}  # where the embedded model's converted weights are cached
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALOE_") or k in keep}
    env.update({"ALOE_DB": "aloe.db", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "160"})
    return {**env, **(extra or {})}


GLOBAL_OPTIONS_WITH_VALUE = {"--config", "--db", "--seed", "--plugin"}


def subcommand(args: list[str]) -> list[str]:
    """``args`` without the global options before the subcommand."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in GLOBAL_OPTIONS_WITH_VALUE else 1
    return args[i:]


@dataclass
class Session:
    """One temporary folder where a block's commands run, and what they printed that later commands need."""

    folder: Path
    stub: StubOpenAIServer
    request: pytest.FixtureRequest
    block: Block
    runs: list[tuple[str, str]] = field(default_factory=list)  # (subcommand, run id) in order
    evals: list[str] = field(default_factory=list)  # the evaluations of the current block
    previous_eval: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def value(self, name: str) -> str:
        """A placeholder of ``SUBSTITUTIONS``."""
        if name == "stub":
            return self.stub.spec()
        if name == "tiny":
            return str(self.request.getfixturevalue("tiny_model_dir"))
        if name == "paper_data":
            return str(paper_data(self.folder))
        if name == "simulate_run":
            simulated = [run for command, run in self.runs if command == "simulate"]
            assert simulated, "the README names a simulate run before any `aloe simulate` ran"
            return simulated[-1]
        if name in ("eval_run_1", "eval_run_2"):
            index = int(name[-1]) - 1
            assert len(self.evals) > index, f"the README names evaluation run {index + 1} before it ran"
            return self.evals[index]
        if name == "previous_eval_options":
            assert self.previous_eval, "`...` after an `aloe eval` with no eval above it"
            args = subcommand(self.previous_eval)[1:]
            at = args.index("--model")
            return shlex.join(args[:at] + args[at + 2 :])
        raise AssertionError(f"unknown placeholder {{{name}}} in SUBSTITUTIONS")

    def run(self, command: Command, *, integration: bool, check_output: bool = True) -> None:
        """Run one README command (every variant of it) and check it in substance."""
        assert command.text not in SKIP
        for variant in variants(command.text):
            text, output = rewrite(variant, command.output, self.value, integration=integration)
            self._run_one(command, text, output if check_output else [])

    def _run_one(self, command: Command, text: str, output: list[str]) -> None:
        words = shlex.split(text)
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        where = f"README line {command.line}: `{command.text}` run as `{text}`"
        assert words and words[0] == "aloe", f"{where}: only `aloe` commands run here; add it to SKIP with a reason"
        args = words[1:]
        for name in re.findall(r"[\w.-]+\.(?:txt|jsonl|toml)\b", text):  # files the command reads
            if name in FILES and not (self.folder / name).exists():
                (self.folder / name).write_text(FILES[name])
            elif name.endswith(".toml") and not (self.folder / name).exists() and (toml := toml_for(self.block, name)):
                (self.folder / name).write_text(toml)
        sub = subcommand(args)
        if sub[:1] == ["view"]:
            self._view(args, env, where)
            return
        interactive = sub[:1] == ["chat"] and len(positionals(sub[1:])) == 1
        started = time.monotonic()
        # In-process (the real CLI entry point through click's runner): a subprocess per command would
        # spend most of this test starting Python and importing torch again.
        previous = Path.cwd()
        os.chdir(self.folder)
        # Collect what earlier tests in this worker left behind first: an unclosed client finalised during the
        # command prints "Exception ignored ... Event loop is closed" into the output captured as the command's.
        gc.collect()
        try:
            proc = CliRunner().invoke(
                cli, args, env=aloe_env(env), input="Hi! I just got back from the market.\n\n" if interactive else ""
            )
        finally:
            os.chdir(previous)
        self.log.append(f"{time.monotonic() - started:6.1f}s  {text}")
        printed = proc.stdout + proc.stderr
        shows_error = any(line.strip().startswith("error:") for line in output)
        assert (proc.exit_code != 0) == shows_error, f"{where}: exit {proc.exit_code}\n{printed[-4000:]}"
        assert "Traceback" not in printed, f"{where}: a traceback\n{printed[-4000:]}"
        lines = [line.strip() for line in printed.splitlines()]
        for documented in output:
            pattern = expected_pattern(documented)
            if pattern and not any(pattern.fullmatch(line) for line in lines):
                pytest.fail(
                    f"{where}: the documented output line\n    {documented.strip()}\nno longer appears "
                    f"(pattern {pattern.pattern!r}); the command printed:\n{printed[-4000:]}"
                )
        if interactive:
            assert "bot> " in proc.stdout, f"{where}: the interactive chat did not answer\n{printed[-4000:]}"
        for flag in ("--out", "--hf-dataset"):
            if flag in args:
                out = self.folder / args[args.index(flag) + 1]
                assert out.exists(), f"{where}: {flag} {out.name} was not written"
                if out.is_dir():  # a folder: the files its comment names
                    for name in re.findall(r"\b[\w-]+\.(?:md|json|jsonl|png|html)\b", command.comment):
                        assert (out / name).is_file(), f"{where}: the comment names {name}, not in {out}"
        for run in re.findall(rf"^run ({RUN_ID})\b", proc.stdout, re.M):
            self.runs.append((sub[0], run))
            if sub[0] == "eval":
                self.evals.append(run)
        if sub[0] == "eval":
            self.previous_eval = args

    def _view(self, args: list[str], env: dict[str, str], where: str) -> None:
        """Start the viewer, wait for its URL, GET /, stop it."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "aloekit.cli", *args],
            cwd=self.folder,
            env=aloe_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        printed: list[str] = []
        url = None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        try:
            while url is None:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                assert line is not None, f"{where}: the viewer ended:\n{''.join(printed)}"
                printed.append(line)
                if match := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                    url = match.group(0)
            assert "read-only" in "".join(printed), f"{where}: {''.join(printed)}"
            with urllib.request.urlopen(url, timeout=60) as response:
                page = response.read().decode()
                assert response.status == 200
            for run in (run for _, run in self.runs):
                assert run in page, f"{where}: run {run} is not on the viewer's front page"
        except queue.Empty:
            pytest.fail(f"{where}: no URL within {SERVER_START_TIMEOUT_S} s:\n{''.join(printed)}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        self.log.append(f"viewer  {shlex.join(['aloe', *args])}")


def positionals(args: list[str]) -> list[str]:
    """The positional arguments of ``aloe chat``'s arguments (each of its options takes a value)."""
    out, i = [], 0
    while i < len(args):
        if args[i].startswith("-"):
            i += 1 if "=" in args[i] else 2
        else:
            out.append(args[i])
            i += 1
    return out


def paper_data(folder: Path) -> Path:
    """The paper's eval files beside the repository, else the built-in set written in the same format."""
    if (PAPER_DATA / "profile_eval.jsonl").is_file():
        return PAPER_DATA
    import aloekit.evaluation

    target = folder / "paper-format-eval-set"
    target.mkdir(exist_ok=True)
    for name in ("profile_eval.jsonl", "personality_eval.jsonl"):  # JSONL of JSON strings, as the paper's
        shutil.copy(Path(aloekit.evaluation.__file__).parent / "data" / name, target / name)
    return target


_PREPARED: dict[tuple[str, ...], tuple[Path, list[tuple[str, str]]]] = {}


def prepare(session: Session, tmp_path_factory: pytest.TempPathFactory, *, integration: bool) -> None:
    """Run the commands the block needs first (``REQUIRES``), once per pytest session, into ``session.folder``."""
    needed = tuple(REQUIRES.get(session.block.commands[0].text, []))
    if not needed:
        return
    if needed not in _PREPARED:
        template = tmp_path_factory.mktemp("readme-prepared")
        first = Session(template, session.stub, session.request, session.block)
        for text in needed:
            source = next(c for b in CONSOLE_BLOCKS for c in b.commands if c.text == text)
            first.run(source, integration=integration, check_output=False)
        _PREPARED[needed] = (template, first.runs)
    template, runs = _PREPARED[needed]
    shutil.copytree(template, session.folder, dirs_exist_ok=True)
    session.runs.extend(runs)


def uses_real_model(block: Block) -> bool:
    """Whether the integration run of ``block`` still names the embedded model somewhere."""
    texts = [rewrite(v, [], lambda name: name, integration=True)[0]
             for c in block.commands if c.text not in SKIP for v in variants(c.text)]  # fmt: skip
    return any("local:smollm2" in text for text in texts)


PARAMS = [pytest.param(block, False, id=block.name) for block in CONSOLE_BLOCKS] + [
    pytest.param(block, True, id=f"{block.name} [SmolLM2]", marks=[pytest.mark.integration, pytest.mark.slow])
    for block in CONSOLE_BLOCKS
    if uses_real_model(block)
]


@pytest.mark.parametrize(("block", "integration"), PARAMS)
def test_console_block(
    block: Block,
    integration: bool,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Run every command of one README console block in order; each must still do what the README shows."""
    with StubOpenAIServer(respond=readme_reply) as stub:
        session = Session(tmp_path, stub, request, block)
        prepare(session, tmp_path_factory, integration=integration)
        try:
            for command in block.commands:
                if command.text not in SKIP:
                    session.run(command, integration=integration)
        finally:
            print("\n".join(session.log))  # timings, shown with -s or on failure


def test_every_readme_command_is_run_or_skipped() -> None:
    """A new README command fails here until it runs or is skipped with a reason; a stale table entry fails too."""
    commands = [c for b in BLOCKS for c in b.commands]
    for block in BLOCKS:
        if block.lang == "console" and not block.commands:
            assert block.body and block.body[0].strip() in OUTPUT_ONLY, (
                f"README line {block.line}: output with no command"
            )
    unknown = [f"line {c.line}: {c.text}" for c in commands if c.text not in SKIP and not c.text.startswith("aloe ")
               and not re.match(r"([A-Z_][A-Z0-9_]*=\S*\s+)+aloe ", c.text)]  # fmt: skip
    assert not unknown, "README commands that neither run nor are in SKIP:\n" + "\n".join(unknown)
    bash = [c.text for b in BLOCKS if b.lang == "bash" for c in b.commands]
    assert all(text in SKIP for text in bash), "bash-block commands run only through SKIP (they are not `aloe`)"
    texts = {c.text for c in commands}
    assert not set(SKIP) - texts, f"SKIP entries no longer in the README: {set(SKIP) - texts}"
    firsts = {b.body[0].strip() for b in BLOCKS if b.body}
    assert not set(OUTPUT_ONLY) - firsts, f"OUTPUT_ONLY entries no longer in the README: {set(OUTPUT_ONLY) - firsts}"
    for first, needed in REQUIRES.items():
        find_block(first)
        assert all(text in texts for text in needed), f"REQUIRES names a command not in the README: {needed}"
    named = {name for text in texts for name in re.findall(r"[\w.-]+\.(?:txt|jsonl)\b", text)}
    assert set(FILES) <= named, f"FILES entries no README command reads: {set(FILES) - named}"
    used: set[int] = set()
    for block in CONSOLE_BLOCKS:
        for command in block.commands:
            for variant in variants(command.text):
                for integration in (False, True):
                    rewrite(variant, command.output, lambda name: f"<{name}>", integration=integration, used=used)
    stale = [SUBSTITUTIONS[i].find for i in range(len(SUBSTITUTIONS)) if i not in used]
    assert not stale, f"SUBSTITUTIONS entries that change no README command: {stale}"
    for block in CONSOLE_BLOCKS:
        for command in block.commands:
            if "aloe.toml" in command.text:
                assert toml_for(block, "aloe.toml"), f"README line {command.line}: no `# aloe.toml` block above it"


def test_every_inline_role_options_tip_is_accepted_by_a_judge_kind() -> None:
    """The README's inline ``options = { ... }`` tips parse as TOML and are valid options of a judge kind (the
    scorer, the preference judge or persona_similarity), checked as a run would check them (a tip that failed
    as written was once shipped)."""
    import tomllib

    from aloekit.graphs.simulate import RoleConfig, check_role

    tips = re.findall(r"`(options = \{[^`]*\})`", README.read_text())
    assert len(tips) >= 4, tips
    for tip in tips:
        options = tomllib.loads(tip)["options"]
        errors = []
        kinds = ("alignment_scorer", "preference_judge", "persona_similarity")
        for kind in kinds:
            try:
                check_role("judge", RoleConfig(kind=kind, options=options))
            except Exception as exc:  # noqa: BLE001 - collected: the tip must suit one kind
                errors.append(str(exc))
        assert len(errors) < len(kinds), f"README tip `{tip}` fits no judge kind: {errors}"
