"""Online RL with the simulated user in the loop: LoRA GRPO through trl's own ``GRPOTrainer``.

Each optimiser step advances every running conversation by one turn. For each, the policy samples a group
of G replies to the conversation so far (trl's generation, called from a ``rollout_func`` so the prompt is
read from the environment at generation time), the judge scores every reply (the reward), and the
conversation continues with the best one (RLPA's best-of-n); trl computes the advantage within each group.
The prompt holds the whole conversation, the simulator's messages included, and only the sampled reply is
a completion: the simulator's tokens are never a training target. A finished conversation starts again with
the next training persona.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field

from aloekit.agents.base import Answer, Message
from aloekit.config import MAX_SEED, GenerationOptions, Settings, one_line
from aloekit.errors import AloeError, ConfigError
from aloekit.graphs.simulate import MAX_TURNS, RoleConfig
from aloekit.personas.models import PersonaPair
from aloekit.secrets import redact
from aloekit.training.environment import SimulatedUserEnv
from aloekit.training.train import LoraSettings, checkpointing_args, mixed_precision, precision_args

T = TypeVar("T")
ROLLOUT_STATE = "aloekit_rollout.json"
"""The rollout's part of a GRPO checkpoint, beside trl's."""
SLOT_PREFIX = "aloekit rollout slot "
"""A dataset row's prompt is a placeholder naming its conversation slot; the real prompt comes from the
environment when trl generates (a prompt read when the row is fetched would be one step stale: accelerate
fetches the next batch ahead)."""


ROLE_ANSWERS: dict[str, Answer] = {"user": "text", "judge": "score", "profile": "score"}
"""What each GRPO role answers with: the user's turns, and the rewards' scores."""


class GRPOSettings(Settings):
    """One ``aloe train grpo`` run (the GRPO counterpart of :class:`~aloekit.training.TrainConfig`)."""

    base: str = "local:smollm2"
    """Policy base model: ``local:smollm2`` or ``hf:PATH``."""
    out: Path
    """Folder for the adapter and ``training_summary.json``."""
    personas: int = Field(default=4, ge=1, le=1024)
    """Conversations running at once; each optimiser step advances every one by a turn."""
    turns: int = Field(default=3, ge=1, le=MAX_TURNS)
    """Turns per conversation; then the slot starts a new conversation with the next persona."""
    group: int = Field(default=4, ge=2, le=64)
    """Replies sampled per turn (G): the group whose rewards give the advantages."""
    max_steps: int = Field(default=20, ge=1)
    """Optimiser steps."""
    init_adapter: Path | None = None
    """Continue training this adapter (for example the DPO one)."""
    save_steps: int | None = Field(default=None, ge=1)
    """Save a checkpoint every N steps into ``out/checkpoint-N``: adapter, optimiser, trl's state and the
    rollout's (rewards so far, conversations started), for ``resume``."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out``: the same optimiser and step count; conversations that
    were running start afresh with the next personas (an unfinished conversation is not in the checkpoint)."""
    overwrite: bool = False
    """Replace an adapter already in ``out``."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed for persona sampling, the environment and trl."""
    lora: LoraSettings = LoraSettings()
    """LoRA settings (as for SFT and DPO)."""
    max_completion_length: int = Field(default=64, ge=1)
    """Longest sampled reply, in tokens."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the group (GRPO needs different replies to compare)."""
    user: RoleConfig = RoleConfig(kind="user_simulator", generation=GenerationOptions(max_tokens=64, temperature=0.8))
    """The user simulator."""
    judge: RoleConfig = RoleConfig(kind="alignment_scorer", generation=GenerationOptions(max_tokens=8, temperature=0))
    """The reward: a scorer (``alignment_scorer``, expected scores in-process; or ``persona_similarity``)."""
    profile: RoleConfig | None = None
    """RLPA's profile-inference term (``kind = "profile_inference"``): added to the judge's score, weighted."""
    profile_weight: float = Field(default=1.0, ge=0)
    """Weight of the profile term in the reward."""
    eval_set: str = "builtin"
    """Its personas are never trained on."""
    trl: dict[str, Any] = {}
    """Any other ``GRPOConfig`` field (learning_rate, beta, loss_type...)."""

    @property
    def roles(self) -> dict[str, RoleConfig]:
        """The configured roles by name: user, judge, and profile when the profile term is on."""
        return {"user": self.user, "judge": self.judge, **({"profile": self.profile} if self.profile else {})}

    @property
    def conversations(self) -> int:
        """Conversations the run starts: every slot, once per ``turns`` steps."""
        return self.personas * math.ceil(self.max_steps / self.turns)

    def with_backend(self, role: str, spec: str) -> GRPOSettings:
        """A copy with ``user``, ``judge`` or ``profile`` on backend ``spec`` (``--role ROLE=SPEC``); naming
        ``profile`` turns the profile-inference term on."""
        if role not in ("user", "judge", "profile"):
            raise AloeError(f"unknown role {role!r} in --role (use user, judge or profile; --base sets the policy)")
        current = getattr(self, role) or RoleConfig(kind="profile_inference", generation=self.judge.generation)
        return self.model_copy(update={role: current.model_copy(update={"backend": spec})})


class Rollout:
    """The environments of a GRPO run and the two functions trl calls: ``rollout_func`` and the reward."""

    def __init__(
        self, envs: Sequence[SimulatedUserEnv], personas: Sequence[PersonaPair], seed: int, max_conversations: int
    ) -> None:
        if not personas:
            raise AloeError("GRPO needs at least one training persona")
        self.envs = list(envs)
        self.personas, self.seed, self.max_conversations = list(personas), seed, max_conversations
        self.started = 0
        self.loop = asyncio.new_event_loop()  # one loop for the run: backend clients bind to it
        self.step_rewards: list[float] = []
        self.unscored = 0

    def _run_all(self, coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
        """Run coroutines concurrently on the rollout's loop (gathered inside it, not bound to another)."""

        async def gather() -> list[T]:
            return list(await asyncio.gather(*coroutines))

        return self.loop.run_until_complete(gather())

    async def _start(self, env: SimulatedUserEnv) -> None:
        position = self.started  # taken before the await: slots start concurrently
        self.started += 1
        await env.areset(self.personas[position % len(self.personas)], seed=self.seed, position=position)

    def start(self) -> None:
        """Open every slot's first conversation."""
        self._run_all(self._start(env) for env in self.envs)

    def dataset_rows(self) -> list[dict[str, Any]]:
        """One placeholder row per slot (trl repeats each ``group`` times)."""
        return [
            {"prompt": [{"role": "user", "content": f"{SLOT_PREFIX}{i}"}], "slot": i} for i in range(len(self.envs))
        ]

    def messages(self, prompt: Any) -> list[Message]:
        """The conversation a placeholder prompt stands for, as it is now."""
        text = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
        if not text.startswith(SLOT_PREFIX):
            raise AloeError(f"unexpected GRPO prompt {one_line(text)[:80]!r}: rows must come from Rollout.dataset_rows")
        return self.envs[int(text[len(SLOT_PREFIX) :])].messages()

    def rollout_func(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        """trl's ``rollout_func``: the environments' current conversations, sampled by trl's own generation."""
        conversations = [self.messages(p) for p in prompts]
        try:  # trl's own tokenising and generation (vLLM, continuous batching or generate), as its default path
            tokenize, generate = trainer._tokenize_prompts, trainer._generate_single_turn
        except AttributeError:
            import trl

            raise AloeError(f"aloe train grpo needs trl's GRPOTrainer generation helpers (trl 1.16); trl "
                            f"{trl.__version__} has none: install trl==1.16.*") from None  # fmt: skip
        prompt_ids, _, _ = tokenize(conversations)
        completion_ids, logprobs = generate(prompt_ids, None, {}, trainer.num_generations)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

    def reward(self, prompts: list[Any], completions: list[Any], slot: list[int], **_: Any) -> list[float]:
        """The judge's score of every reply; each slot's group then continues with its best reply."""
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        groups: dict[int, list[int]] = {}
        for row, index in enumerate(slot):
            groups.setdefault(int(index), []).append(row)

        async def advance(index: int, rows: list[int]) -> list[float | None]:
            env = self.envs[index]
            result = await env.astep([texts[r] for r in rows])
            if result.done and self.started < self.max_conversations:  # no conversation the run cannot use
                await self._start(env)
            return result.info["rewards"]

        results = self._run_all(advance(i, rows) for i, rows in groups.items())
        rewards: list[float] = [0.0] * len(texts)
        for rows, values in zip(groups.values(), results, strict=True):
            scored = [v for v in values if v is not None]
            # An unscored reply carries no information: the group mean gives it no advantage either way.
            fill = sum(scored) / len(scored) if scored else 0.0
            self.unscored += len(values) - len(scored)
            for row, value in zip(rows, values, strict=True):
                rewards[row] = value if value is not None else fill
        self.step_rewards.append(sum(rewards) / len(rewards))
        return rewards

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the rollout: enough to resume its persona order and reward history."""
        return {"started": self.started, "step_rewards": self.step_rewards, "unscored": self.unscored}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (before :meth:`start`): the next conversations take the next personas."""
        self.started, self.unscored = int(state["started"]), int(state["unscored"])
        self.step_rewards = [float(r) for r in state["step_rewards"]]

    def close(self, backends: Any = None) -> None:
        """Mark conversations cut short by the end of training ``incomplete``; close ``backends`` (a
        :class:`~aloekit.agents.backends.BackendPool`, whose clients live on this loop) and the loop."""
        for env in self.envs:
            if env.trees is not None and env.started and not env.done:
                env.trees.set_status(env.conversation_id, "incomplete", "training ended mid-conversation")
        if backends is not None:
            self.loop.run_until_complete(backends.aclose())
        self.loop.close()


def grpo_args(settings: GRPOSettings) -> Any:
    """trl's own GRPOConfig: one optimiser step = one generation = one turn of every slot."""
    import torch
    from trl import GRPOConfig

    cuda = torch.cuda.is_available()
    owned = {  # from GRPOSettings' own checked fields: setting them under `trl` would bypass those checks
        "max_steps": settings.max_steps, "seed": settings.seed,
        "per_device_train_batch_size": settings.group, "num_generations": settings.group,
        "gradient_accumulation_steps": settings.personas, "steps_per_generation": settings.personas,
        "max_completion_length": settings.max_completion_length, "temperature": settings.temperature,
    }  # fmt: skip
    if settings.save_steps is not None:
        owned |= {"save_strategy": "steps", "save_steps": settings.save_steps}
    defaults = {
        "output_dir": str(settings.out),
        "learning_rate": 5e-5,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not cuda,
        **checkpointing_args(cuda, None, settings.trl),
        **precision_args(cuda, settings.trl),
        "shuffle_dataset": False,
    }
    if clash := sorted(set(owned) & set(settings.trl)):
        raise ConfigError(f"train config: trl.{clash[0]} is set by aloe train grpo's own settings; use those")
    try:
        return GRPOConfig(**{**defaults, **owned, **settings.trl})
    except (TypeError, ValueError) as exc:
        raise ConfigError(one_line(f"train config: GRPOConfig rejected the trl options: {exc}")) from None


def last_checkpoint(out: Path) -> Path:
    """The newest ``checkpoint-N`` in ``out`` that holds the rollout's state; one line if there is none."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(out)) if out.is_dir() else None
    if found is None or not (Path(found) / ROLLOUT_STATE).is_file():
        raise ConfigError(f"--resume: no GRPO checkpoint in {out} (save them with --save-steps N)")
    return Path(found)


RESUMABLE = {"out", "resume", "overwrite", "save_steps", "max_steps"}
"""Settings a resumed run may change (``max_steps``: train on past the checkpoint's end); any other change would
continue a checkpoint with another setup than it was trained with."""


def resume_key(settings: GRPOSettings, backends: Any = None) -> dict[str, Any]:
    """What a checkpoint was trained with that its resumption must keep: every setting but :data:`RESUMABLE`,
    and which files each in-process model (the policy's base, the roles') answers with, from ``backends``;
    secrets redacted, as everything written to disk."""
    from aloekit.agents.backends import BackendPool

    pool = backends if backends is not None else BackendPool()
    files = pool.files([settings.base, *(role.backend for role in settings.roles.values())])
    key = {"settings": settings.model_dump(mode="json", exclude=RESUMABLE), "files": files}
    return json.loads(redact(json.dumps(key)))


def read_rollout_state(checkpoint: Path) -> dict[str, Any]:
    """The rollout's part of ``checkpoint``; one line when it is not readable."""
    path = checkpoint / ROLLOUT_STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(one_line(f"--resume: {path}: not readable: {exc}")) from None
    if not isinstance(state, dict):
        raise ConfigError(f"--resume: {path}: expected a JSON object")
    return state


def check_resumable(checkpoint: Path, key: dict[str, Any]) -> None:
    """Refuse, in one line naming the first difference, to resume ``checkpoint`` with another setup than
    :func:`resume_key` recorded in it (a checkpoint saved before keys were recorded resumes as before)."""
    saved = read_rollout_state(checkpoint).get("resume_key")
    if not isinstance(saved, dict):
        return
    # Settings first: another role spec is named as such, not as a spec whose files are unknown.
    found = _first_difference(saved.get("settings"), key["settings"], "settings") or _first_difference(
        saved.get("files"), key["files"], "files"
    )
    if found is None:
        return
    path, was, now = found
    if path.startswith("files."):
        what = f"the files of {path.removeprefix('files.')} changed since (retrained or replaced)"
    else:
        what = f"{path.removeprefix('settings.')} was {json.dumps(was)}, now {json.dumps(now)}"
    raise ConfigError(f"--resume: {checkpoint} was trained with another setup: {what}; resume with the same "
                      "one (only --max-steps and --save-steps may change), or train into another --out")  # fmt: skip


def _first_difference(saved: Any, now: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted path where two JSON values differ, with both values there; None when equal."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now)):
            if found := _first_difference(saved.get(key), now.get(key), f"{path}.{key}" if path else key):
                return found
        return None
    return None if saved == now else (path, saved, now)


def rollout_saver(rollout: Rollout, key: dict[str, Any]) -> Any:
    """A trainer callback writing the rollout's state, and the run's :func:`resume_key`, into every checkpoint
    trl saves."""
    from transformers import TrainerCallback

    class SaveRollout(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # transformers' own naming
            if folder.is_dir():
                (folder / ROLLOUT_STATE).write_text(json.dumps({**rollout.state(), "resume_key": key}))

    return SaveRollout()


def build_environments(
    settings: GRPOSettings, backends: Any, trees: Any = None, run_id: str | None = None
) -> list[SimulatedUserEnv]:
    """One environment per slot, sharing the user and judge roles (roles keep no state between calls)."""
    from aloekit.graphs.simulate import build_role

    roles = {name: build_role(backends, name, rc, answer=ROLE_ANSWERS[name]) for name, rc in settings.roles.items()}
    return [SimulatedUserEnv(roles["user"], roles["judge"], max_turns=settings.turns, trees=trees, run_id=run_id,
                             policy_backend=settings.base, profile=roles.get("profile"),
                             profile_weight=settings.profile_weight) for _ in range(settings.personas)]  # fmt: skip


def training_personas(pool: Any, settings: GRPOSettings, needed: int) -> list[PersonaPair]:
    """Up to ``needed`` distinct persona pairs from the pool, the eval set's personas kept out (a run that
    needs more conversations than there are pairs cycles through them)."""
    from aloekit.evaluation.task import eval_persona_ids

    held_out = eval_persona_ids(settings.eval_set)
    profiles = sum(p.id not in held_out for p in pool.list("profile"))
    personalities = sum(p.id not in held_out for p in pool.list("personality"))
    if not profiles or not personalities:
        raise AloeError(f"no training personas left after keeping the {settings.eval_set} eval personas out "
                        "(aloe personas import or generate more)")  # fmt: skip
    return pool.sample_pairs(min(needed, profiles * personalities), seed=settings.seed, exclude=held_out)


def personas_hash(personas: Sequence[PersonaPair]) -> str:
    """The training data of a GRPO run is its personas: their ids, hashed."""
    return hashlib.sha256(json.dumps([p.id for p in personas]).encode()).hexdigest()[:16]


def train_grpo(
    settings: GRPOSettings,
    envs: Sequence[SimulatedUserEnv],
    personas: Sequence[PersonaPair],
    *,
    callbacks: list[Any] | None = None,
    on_status: Callable[[str], None] | None = None,
    extra_summary: dict[str, Any] | None = None,
    backends: Any = None,
) -> dict[str, Any]:
    """Run GRPO with ``envs`` (one per slot, ``settings.personas`` of them) over ``personas``; write the adapter
    and ``training_summary.json`` into ``settings.out``. ``backends``, the pool the environments' roles use,
    is closed at the end."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from aloekit.training.train import drop_printing, load_model_and_tokenizer, lora_model, resolve_base

    status = on_status or (lambda text: None)
    # rollout_func is trl's documented hook for custom rollouts, marked experimental: we use it on purpose,
    # and the tests pin what we rely on (prompt ids from the environment at generation time).
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if len(envs) != settings.personas:
        raise AloeError(f"GRPO needs one environment per slot: {settings.personas} slots, {len(envs)} environments")
    rollout = Rollout(envs, personas, settings.seed, settings.conversations)
    checkpoint = last_checkpoint(settings.out) if settings.resume else None
    key = resume_key(settings, backends)
    if checkpoint is not None:
        check_resumable(checkpoint, key)
        try:
            rollout.restore(read_rollout_state(checkpoint))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"--resume: {checkpoint / ROLLOUT_STATE}: not a rollout state (a field is missing "
                              "or of another type)") from None  # fmt: skip
    try:
        status(f"resolving base {settings.base}")
        base_dir = resolve_base(settings.base)
        args = grpo_args(settings)  # before the model loads, as for sft/dpo (ZeRO-3 shards at load time)
        model, tokenizer = load_model_and_tokenizer(base_dir)
        tokenizer.padding_side = "left"  # trl generates from left-padded prompts
        model, peft_config = lora_model(model, settings.lora, settings.init_adapter)
        status("opening the conversations")
        rollout.start()
        trainer = GRPOTrainer(
            model=model, reward_funcs=[rollout.reward], args=args,
            train_dataset=Dataset.from_list(rollout.dataset_rows()), processing_class=tokenizer,
            peft_config=peft_config, callbacks=[*(callbacks or []), rollout_saver(rollout, key)],
            rollout_func=rollout.rollout_func,
        )  # fmt: skip
        if callbacks:
            drop_printing(trainer)
        resumed = f", resumed from {checkpoint.name}" if checkpoint is not None else ""
        status(f"GRPO: {settings.personas} conversations x group {settings.group}{resumed}")
        started = time.time()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        runtime = time.time() - started
    finally:
        rollout.close(backends)
    settings.out.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(settings.out))
    tokenizer.save_pretrained(str(settings.out))
    rewards = [round(r, 6) for r in rollout.step_rewards]  # one per generation: every step, whatever logging_steps
    summary = {
        "method": "grpo",
        "base": settings.base,
        "base_dir": str(base_dir),
        "config": settings.model_dump(mode="json"),
        "steps": trainer.state.global_step,
        "resumed_from": str(checkpoint) if checkpoint is not None else None,
        "conversations_started": rollout.started,
        "rewards_per_step": rewards,
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "unscored_replies": rollout.unscored,
        "data_hash": personas_hash(personas),
        "train_loss": result.training_loss if not math.isnan(result.training_loss) else None,
        "runtime_s": round(runtime, 2),
        "mixed_precision": mixed_precision(trainer.args),
        "adapter_spec": f"{settings.base}+{settings.out}",
        **(extra_summary or {}),
    }
    (settings.out / "training_summary.json").write_text(redact(json.dumps(summary, indent=2)))  # specs' keys
    return summary
