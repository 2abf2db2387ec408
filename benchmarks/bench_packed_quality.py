"""How closely ``local:smollm2`` decoding with packed GGUF blocks follows the float32 weights it replaces.

For each of 12 prompts the float model writes a greedy reply; then the packed model (torch's kernels), the packed
model in bfloat16 (the default on a CPU with AMX tiles) through the int8 dot kernel (aloekit's default where
this process has it) and through torch's kernels and, for scale, the model loaded as bfloat16 decode the same
tokens one at a time, and each step's next-token distribution is compared with the float model's: how often the
greedy token is the same, and the mean KL divergence (nats). The packed weights are the GGUF's own, so the
difference is the int8 dot kernel's inputs rounded to int8 per block of 32 (as llama.cpp's), or torch's
bfloat16 arithmetic plus the output layer's int8 re-rounding (on a CPU with AMX tiles, its bfloat16 weight
instead, as aloekit takes it without the int8 dot kernel).

Run: ``.venv/bin/python benchmarks/bench_packed_quality.py`` (about three minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from typing import Any

import torch

from aloekit.agents.backends import packed
from aloekit.agents.backends.int8_dot import int8_dot_missing
from aloekit.agents.backends.local import converted_model_dir, cpu_has_bfloat16_tiles, find_smollm2_gguf

TOPICS = ["running", "coffee", "houseplants", "chess", "hiking", "baking bread", "jazz", "sailing", "tax forms",
          "a job interview", "sleep", "learning Spanish"]  # fmt: skip


def step_logits(model: Any, prompt: torch.Tensor, reply: list[int]) -> torch.Tensor:
    """The next-token logits before each token of ``reply``, decoding it one token at a time after ``prompt``."""
    out = model(prompt, use_cache=True, logits_to_keep=1)  # as generate() asks: the output layer sees one row
    logits = [out.logits[0, -1].float()]
    for token in reply[:-1]:
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[0, -1].float())
    return torch.stack(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48, help="tokens per reply")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="`past_key_values` is deprecated")  # the name works up to 5.40
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    folder = converted_model_dir(gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    packed_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    blocks = packed.cached_gguf_blocks(packed_model, gguf, folder)
    layers = packed.pack_linears(packed_model, blocks)
    models = {"packed": packed_model}
    for kernels in ["int8 dot", "torch"] if int8_dot_missing() is None else ["torch"]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()  # as aloekit loads it
        # without the int8 dot kernel, as aloekit decides it: the output layer on AMX where the CPU has them
        packed.pack_linears(model, blocks, tiles=cpu_has_bfloat16_tiles(), int8_dot=kernels == "int8 dot")
        models[f"packed bfloat16, {kernels}"] = model
    models["bfloat16"] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    same: dict[str, list[bool]] = {name: [] for name in models}
    divergence: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for topic in TOPICS:
            chat = [{"role": "user", "content": f"Give me a tip about {topic}."}]
            prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)["input_ids"]  # fmt: skip
            reply = reference.generate(prompt, max_new_tokens=args.tokens, do_sample=False)[0, prompt.shape[1] :]
            expected = step_logits(reference, prompt, reply.tolist()).log_softmax(-1)
            for name, model in models.items():
                got = step_logits(model, prompt, reply.tolist()).log_softmax(-1)
                same[name] += (got.argmax(-1) == expected.argmax(-1)).tolist()
                kl = torch.nn.functional.kl_div(got, expected, log_target=True, reduction="none").sum(-1)
                divergence[name] += kl.tolist()
    print(f"local:smollm2, {len(TOPICS)} greedy replies x {args.tokens} tokens against float32; {layers} layers packed")
    for name in same:
        print(f"{name:>26}: same greedy token at {statistics.mean(same[name]):.1%} of {len(same[name])} steps, "
              f"mean KL {statistics.mean(divergence[name]):.4f}, max {max(divergence[name]):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
