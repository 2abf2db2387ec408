"""Run many stored conversations concurrently, each from its last saved turn, with uniform failure handling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aloekit.errors import AloeError, BudgetExhausted
from aloekit.graphs.storage import UNFINISHED, Conversation, TreeStore

logger = logging.getLogger(__name__)


async def drive_conversations(
    trees: TreeStore,
    run_id: str,
    concurrency: int,
    advance: Callable[[Conversation], Awaitable[None]],
    on_done: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Call ``advance`` on every unfinished conversation of ``run_id``, ``concurrency`` at a time.

    ``advance`` continues one conversation and saves each turn as it completes. A spent budget marks the
    conversation incomplete; any other :class:`AloeError` (a backend failing after its retries) marks
    it failed with the reason, and the others go on. Returns the failure lines.
    """
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(conversation_id: str) -> None:
        async with gate:
            conversation = trees.get(conversation_id)
            trees.set_status(conversation_id, "running")
            try:
                await advance(conversation)
                status, error = "complete", None
            except BudgetExhausted as exc:
                status, error = "incomplete", str(exc)
            except AloeError as exc:
                logger.warning("conversation %s failed: %s", conversation_id, exc)
                status, error = "failed", str(exc)
                failures.append(f"{conversation_id}: {exc}")
            trees.set_status(conversation_id, status, error)
            if on_done:
                on_done(conversation_id, status)

    async with asyncio.TaskGroup() as group:  # an unexpected error cancels the rest instead of orphaning them
        for conversation in trees.conversations(run_id, statuses=UNFINISHED):
            group.create_task(one(conversation.id))
    return failures
