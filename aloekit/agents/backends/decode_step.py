"""The static engine's decoding steps of a Llama model in plain torch calls, equal bit for bit to transformers'.

A decoding step feeds one token per row through every layer. Through transformers' modules, a good part of it
is Python: module calls, the causal mask and rotary embedding rebuilt, the attention dispatch. On 2 CPU cores,
SmolLM2-135M with 8 rows takes 34 ms a step, of which its kernels (int4/int8 matmuls, attention) take 20; the
same calls made directly take 29 ms (1 row: 16.5 and 12.5). :func:`plain_decoding_steps` makes ``generate``'s
decoding steps of a transformers ``LlamaForCausalLM`` with sdpa attention and the default rotary embedding
take :class:`PlainLlamaStep`, which makes the same torch calls on the same tensors in the same order: its
logits equal transformers' bit for bit (tested), so a reply is the same token for token. Every other call
(a prompt, a guided choice, another architecture) keeps transformers' forward. transformers offers no such
path: its own fast paths (CUDA graphs, ``torch.compile``) are for GPUs, and compiling measured slower here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

STEP_KEYWORDS = frozenset(
    {"input_ids", "attention_mask", "position_ids", "cache", "past_key_values", "use_cache", "return_dict",
     "logits_to_keep", "output_attentions", "output_hidden_states"}
)  # fmt: skip
"""What ``generate`` passes a decoding step: a call with anything else (set) keeps transformers' forward."""


def plain_step(model: Any) -> PlainLlamaStep | None:
    """:class:`PlainLlamaStep` for ``model`` (peft's wrapper looked through), or None where its arithmetic would
    not be transformers': another architecture or attention, another rotary embedding, a model in training."""
    from transformers import LlamaForCausalLM

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base) is not LlamaForCausalLM or base.training:
        return None
    if base.config._attn_implementation != "sdpa" or base.model.rotary_emb.rope_type != "default":
        return None
    if (step := base.__dict__.get("_plain_step")) is None:  # made once: it joins the packed weights
        step = base._plain_step = PlainLlamaStep(base)
    return step


@contextlib.contextmanager
def plain_decoding_steps(model: Any) -> Iterator[bool]:
    """Within the block, ``model``'s decoding steps (one token per row, with a KV cache and position ids, as
    ``generate`` calls them) take :func:`plain_step`; any other call, transformers'
    forward. Yields whether the plain step applies to ``model``."""
    step = plain_step(model)
    if step is None:
        yield False
        return
    base = step.model
    own = base.__dict__.get("forward")  # an instance forward someone set (accelerate's hooks) is put back
    forward = base.forward

    @functools.wraps(forward)  # generate reads the forward's signature (it passes position ids if it names them)
    def routed(*args: Any, **kwargs: Any) -> Any:
        return step.output(kwargs) if not args and step.takes(kwargs) else forward(*args, **kwargs)

    base.forward = routed
    try:
        yield True
    finally:
        if own is None:
            del base.forward
        else:
            base.forward = own


def _linear(module: Any) -> Callable[[Any], Any]:
    """``x`` [rows, features] through ``module`` as transformers' decoding step sends [rows, 1, features]."""
    import torch
    from torch.nn.functional import linear

    from aloekit.agents.backends.packed import _packed_class

    if type(module) is torch.nn.Linear:
        return lambda x: linear(x[:, None], module.weight, module.bias)[:, 0]
    if type(module) is _packed_class():  # its forward for a step, without the module call
        return lambda x: module.packed_matmul(x.to(torch.bfloat16)).to(x.dtype)
    return lambda x: module(x[:, None])[:, 0]  # anything else (a peft adapter's layer): the module itself


def _joined(modules: list[Any]) -> Callable[[Any], Any]:
    """``x`` [rows, features] through each of ``modules`` (which take the same input), their outputs side by
    side: one int4 kernel call where each is packed so, else one call each."""
    import torch

    from aloekit.agents.backends.packed import Q4Matmul, _packed_class

    matmuls = [getattr(module, "packed_matmul", None) for module in modules]
    if all(type(m) is _packed_class() and isinstance(k, Q4Matmul) for m, k in zip(modules, matmuls, strict=True)):
        joined = Q4Matmul.joined(matmuls)
        return lambda x: joined(x.to(torch.bfloat16)).to(x.dtype)
    each = list(map(_linear, modules))
    return lambda x: torch.cat([linear(x) for linear in each], dim=-1)


def _rms_norm(x: Any, norm: Any) -> Any:
    """transformers' ``LlamaRMSNorm`` forward."""
    import torch

    h = x.to(torch.float32)
    return norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)).to(x.dtype)


class PlainLlamaStep:
    """One decoding step of a transformers ``LlamaForCausalLM``: embedding, rotary embedding, each layer's
    norm, projections, cache update, sdpa attention (as transformers calls it for one query token) and MLP,
    final norm and output layer. Packed q/k/v and gate/up layers each run as one kernel call (their columns
    equal bit for bit); float weights are read at each call, so an update in place is seen."""

    def __init__(self, model: Any) -> None:
        from transformers.modeling_outputs import CausalLMOutputWithPast

        self.model = model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.layers = [
            (layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn.scaling, layer.mlp.act_fn,
             _joined([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
             _linear(layer.self_attn.o_proj), _joined([layer.mlp.gate_proj, layer.mlp.up_proj]),
             _linear(layer.mlp.down_proj))
            for layer in model.model.layers[: config.num_hidden_layers]
        ]  # fmt: skip
        self.head = _linear(model.lm_head)
        # the output's name for the cache: ``cache`` in later transformers 5 releases, ``past_key_values`` before
        self.cache_field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        self.output_class = CausalLMOutputWithPast

    def takes(self, kwargs: dict[str, Any]) -> bool:
        """Whether a forward call with ``kwargs`` is a decoding step this class computes."""
        import torch
        from transformers import Cache

        ids, mask, positions = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("position_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        return (
            all(key in STEP_KEYWORDS for key, value in kwargs.items() if value is not None)
            and isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] == 1
            and isinstance(positions, torch.Tensor) and positions.shape == ids.shape
            and (mask is None or isinstance(mask, torch.Tensor) and mask.dim() == 2)  # None: every position counts
            and isinstance(cache, Cache) and kwargs.get("use_cache") is not False
            and not kwargs.get("output_attentions") and not kwargs.get("output_hidden_states")
        )  # fmt: skip

    def output(self, kwargs: dict[str, Any]) -> Any:
        """transformers' output for the decoding step ``kwargs`` (see :meth:`takes`)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        logits = self(kwargs["input_ids"], kwargs["position_ids"], kwargs.get("attention_mask"), cache)
        return self.output_class(logits=logits[:, None], **{self.cache_field: cache})

    def __call__(self, input_ids: Any, position_ids: Any, attention_mask: Any, cache: Any) -> Any:
        """Logits [rows, vocabulary] for ``input_ids`` [rows, 1] at ``position_ids`` [rows, 1], attending where
        ``attention_mask`` [rows, positions] is 1 (None: everywhere), the keys and values appended to ``cache``."""
        import torch
        from torch.nn.functional import embedding, scaled_dot_product_attention

        inner, rows, intermediate = self.model.model, input_ids.shape[0], self.intermediate
        heads, kv_heads, dim, half = self.heads, self.kv_heads, self.head_dim, self.head_dim // 2
        hidden = embedding(input_ids[:, 0], inner.embed_tokens.weight)
        rotary = inner.rotary_emb
        freqs = position_ids[..., None].float() * rotary.inv_freq.to(device=hidden.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)  # [rows, 1, head_dim]: one position, all heads alike
        cos = (angles.cos() * rotary.attention_scaling).to(hidden.dtype)
        sin = (angles.sin() * rotary.attention_scaling).to(hidden.dtype)
        # transformers' sdpa call for one query token: without a mask where every position counts (its mask
        # function then returns None), the query heads that share a key head then run as its queries
        groups = heads // kv_heads
        everywhere = attention_mask is None or bool(attention_mask.all())
        mask = None if everywhere else attention_mask.bool()[:, None, None, :]
        query_shape, gqa = (rows, heads, 1, dim), {}
        if groups > 1 and mask is None:
            gqa = {"enable_gqa": True}
        elif groups > 1:
            query_shape = (rows, kv_heads, groups, dim)
        for index, (norm, post_norm, scaling, act, qkv, o, gate_up, down) in enumerate(self.layers):
            x = _rms_norm(hidden, norm)
            projected = qkv(x).view(rows, heads + 2 * kv_heads, dim)  # query heads, key heads, value heads
            rotated = projected[:, : heads + kv_heads]  # queries and keys rotate alike
            rotated = rotated * cos + torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1) * sin
            keys, values = cache.update(rotated[:, heads:, None], projected[:, heads + kv_heads :, None], index)
            attended = scaled_dot_product_attention(
                rotated[:, :heads].reshape(query_shape), keys, values, attn_mask=mask, scale=scaling, **gqa
            )
            hidden = hidden + o(attended.reshape(rows, heads * dim))
            gated = gate_up(_rms_norm(hidden, post_norm))
            # contiguous: torch's silu rounds a strided input differently in the last bit
            hidden = hidden + down(act(gated[:, :intermediate].contiguous()) * gated[:, intermediate:])
        return self.head(_rms_norm(hidden, inner.norm))
