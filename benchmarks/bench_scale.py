"""Paper scale: 3,000 conversations x 10 turns through ``aloe simulate`` against the role-aware stub server
(its own process), concurrency 256, then ``aloe export sft`` and ``aloe export dpo`` of the run.

Prints wall time, calls/s, the simulate process's peak RSS, the database size against the raw text it
holds, bytes per conversation, and the export times. ``--kill-at F`` SIGKILLs ``aloe simulate`` once F of
the turns are saved, resumes the run, and checks that every conversation has exactly its turns and candidates.

Run: ``.venv/bin/python benchmarks/bench_scale.py`` (zero latency) and
``.venv/bin/python benchmarks/bench_scale.py --latency-ms 50 --kill-at 0.5``. The stub's user and assistant
replies are padded to the length the embedded model's replies have (``--reply-chars``, see REPLY_CHARS).
Targets (2 cores, zero latency): under 30 min, peak RSS under 2 GB, database under 3x the text, each
export under 2 min, nothing lost after the kill.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aloekit.contents import ContentStore

GIB = 1024**3
REPLY_CHARS = 190
"""About the mean length of the embedded model's user and assistant replies in ``make demo`` (161-194
characters by role, measured 2026-11-28), whose token limits (32 and 40) are the shortest of any aloekit
preset (``simulate``'s are 64 and 96). The stub's canned replies are a sixth of that: against them the
database's fixed per-call bookkeeping, not the text, is what a size ratio would measure."""
PROFILES = "Person {i} works shift {j} at a bakery in district {k} and keeps {i} houseplants."
PERSONALITIES = "Temperament {i}: answers in {j} words or fewer and jokes about the number {k}."


def aloe(db: Path, *args: str) -> subprocess.Popen:
    """Start the real CLI on ``db``; its errors go to a file (a full pipe would stall it)."""
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "aloekit.cli", "--db", str(db), "-q", *args],
                            stdout=subprocess.DEVNULL, stderr=errors)  # fmt: skip
    proc.errors = errors  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen) -> float:
    """Wait for ``proc`` (reaped here, to read its rusage); its peak RSS in bytes. Exits on a failure."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, -signal.SIGKILL):
        proc.errors.seek(0)  # type: ignore[attr-defined]
        sys.exit(f"aloe failed ({proc.returncode}): {proc.errors.read().decode().strip()[-2000:]}")  # type: ignore[attr-defined]
    return usage.ru_maxrss * 1024


def saved_turns(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    except sqlite3.Error:
        return 0


def text_bytes(db: Path) -> tuple[int, int]:
    """(Every generated message as written, each response once per call; the distinct prompt text that is
    not itself a response: system prompts, personas, rendered judge and inducer prompts). Their sum is the
    raw text a run holds; the database is compared with it. Texts are read whole, through the store."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        contents = ContentStore(conn)
        calls_per_response = dict(conn.execute("SELECT response_id, COUNT(*) FROM llm_calls "
                                               "WHERE response_id IS NOT NULL GROUP BY response_id"))  # fmt: skip
        responses = contents.texts(calls_per_response)
        generated = sum(len(body.encode()) * calls_per_response[i] for i, body in responses.items())
        prompts = contents.texts(i for (i,) in conn.execute("SELECT DISTINCT prompt_id FROM llm_calls"))
        in_prompts = {entry[1] for body in prompts.values() for entry in json.loads(body)}
        prompt_only = sum(len(body.encode()) for body in contents.texts(in_prompts - responses.keys()).values())
    return generated, prompt_only


def check_complete(db: Path, conversations: int, turns: int) -> None:
    """Every conversation complete with turns 1..``turns``, each with its two candidate replies (the tree's
    nodes are built from these records), nothing twice."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM conversations GROUP BY status").fetchall())
        per_conversation = set(conn.execute("SELECT COUNT(*), COUNT(DISTINCT turn), MIN(turn), MAX(turn) FROM turns "
                                            "GROUP BY conversation_id").fetchall())  # fmt: skip
        candidates = set(conn.execute("SELECT DISTINCT json_array_length(record, '$.candidates') FROM turns"))
    problems = []
    if statuses != {"complete": conversations}:
        problems.append(f"statuses {statuses}")
    if per_conversation != {(turns, turns, 1, turns)}:
        problems.append(f"(turns, distinct, first, last) per conversation {sorted(per_conversation)}")
    if candidates != {(2,)}:
        problems.append(f"candidates per turn {sorted(candidates)}")
    if problems:
        sys.exit("LOST OR DUPLICATED WORK: " + "; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--reply-chars", type=int, default=REPLY_CHARS,
                        help="the stub's user and assistant replies padded to about this many characters "
                             "(0: its canned 30-70 character replies)")  # fmt: skip
    parser.add_argument(
        "--kill-at", type=float, default=None, metavar="F", help="SIGKILL once F of the turns are saved"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the database here")
    args = parser.parse_args()
    n, turns = args.conversations, args.turns
    server = subprocess.Popen([sys.executable, "-m", "aloekit.testing", "--latency-ms", str(args.latency_ms),
                               "--reply-chars", str(args.reply_chars)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    spec = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = args.keep or Path(tmp) / "aloe.db"
            config = Path(tmp) / "aloe.toml"  # the backend's own limit must not cap the conversations in flight
            config.write_text(f"[backend]\nmax_concurrency = {args.concurrency}\n")
            # The paper drew 3,000 conversations from a pool of 3,310 personas; the built-in seeds hold 20 x 20.
            side = max(20, int((n * 1.2) ** 0.5) + 1)
            for kind, lines in (("profile", PROFILES), ("personality", PERSONALITIES)):
                path = Path(tmp) / f"{kind}.txt"
                path.write_text("".join(lines.format(i=i, j=i % 7, k=i % 11) + "\n" for i in range(side)))
                finish(aloe(db, "personas", "import", "--kind", kind, str(path)))
            common = ["--concurrency", str(args.concurrency), "--role", f"all={spec}"]
            started = time.perf_counter()
            proc = aloe(db, "--config", str(config), "simulate", "--conversations", str(n), "--turns", str(turns),
                        *common)  # fmt: skip
            peak = 0.0
            if args.kill_at is not None:
                while saved_turns(db) < args.kill_at * n * turns and proc.poll() is None:
                    time.sleep(0.5)
                proc.kill()
                peak = finish(proc)
                killed_at = saved_turns(db)
                with sqlite3.connect(db) as conn:
                    run_id = conn.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
                print(f"killed (SIGKILL) with {killed_at} of {n * turns} turns saved; resuming {run_id}")
                proc = aloe(db, "--config", str(config), "simulate", "--resume", run_id, "--concurrency",
                            str(args.concurrency))  # fmt: skip
            peak = max(peak, finish(proc))
            wall = time.perf_counter() - started
            check_complete(db, n, turns)
            with sqlite3.connect(db) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                calls = conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0]
            size = db.stat().st_size
            generated, prompt_only = text_bytes(db)
            exports = {}
            for kind in ("sft", "dpo"):
                t0 = time.perf_counter()
                finish(aloe(db, "export", kind, "--out", str(Path(tmp) / f"{kind}.jsonl")))
                exports[kind] = time.perf_counter() - t0
            replies = f"replies of ~{args.reply_chars} characters" if args.reply_chars else "canned stub replies"
            print(f"{n} conversations x {turns} turns, stub latency {args.latency_ms:g} ms, {replies}, concurrency "
                  f"{args.concurrency}{' (killed once and resumed)' if args.kill_at is not None else ''}")  # fmt: skip
            print(f"wall time:        {wall / 60:.1f} min (target < 30 at zero latency)")
            print(f"calls:            {calls} ({calls / wall:.0f} calls/s)")
            print(f"peak RSS:         {peak / GIB:.2f} GB (target < 2)")
            print(f"database:         {size / 1e6:.1f} MB, {size / n / 1e3:.1f} KB per conversation")
            print(f"raw text:         {(generated + prompt_only) / 1e6:.1f} MB ({generated / 1e6:.1f} MB of generated "
                  f"messages, {prompt_only / 1e6:.1f} MB of distinct prompt text)")  # fmt: skip
            print(f"database / text:  {size / (generated + prompt_only):.2f}x (target < 3)")
            for kind, seconds in exports.items():
                print(f"export {kind}:       {seconds:.1f} s (target < 120)")
            print("nothing lost: every conversation complete with exactly its turns and candidates")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
