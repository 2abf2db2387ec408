"""The static engine's decoding steps of a Llama model in plain torch calls, equal bit for bit to transformers'.

A decoding step feeds one token per row through every layer. Through transformers' modules, a good part of it
is Python: module calls, the causal mask and rotary embedding rebuilt, the attention dispatch. On 2 CPU cores,
a step of SmolLM2-135M with 8 rows takes about 34 ms, of which its kernels (int4/int8 matmuls, attention) take
20; the same calls made directly take about 28 ms (1 row: 17 and 13). :func:`plain_decoding_steps` makes
``generate``'s decoding steps of a transformers ``LlamaForCausalLM`` (sdpa attention, the default rotary
embedding, no sliding window, no hooks) take :class:`PlainLlamaStep`, which makes the same torch calls on the
same tensors in the same order: its logits equal transformers' bit for bit (tested), so a reply is the same
token for token. Every other call (a prompt, a guided choice, another architecture or cache) keeps
transformers' forward. transformers offers no such path: its own fast paths (CUDA graphs, ``torch.compile``)
are for GPUs, and compiling measured slower here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

STEP_KEYWORDS = frozenset(
    {"input_ids", "attention_mask", "position_ids", "cache", "past_key_values", "use_cache", "return_dict",
     "logits_to_keep", "output_attentions", "output_hidden_states", "cache_position"}
)  # fmt: skip
"""What ``generate`` passes a decoding step: a call with anything else (set) keeps transformers' forward."""


def base_model(model: Any) -> Any:
    """The transformers model under peft's wrapper (``model`` itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_step(model: Any) -> PlainLlamaStep | None:
    """:class:`PlainLlamaStep` for ``model`` as it is now (peft's wrapper looked through), or None where its
    arithmetic would not be transformers': another architecture, attention or rotary embedding, a sliding
    window, a model in training, modules it would bypass (hooks, an adapter on the embedding or the norms),
    or a transformers without the one-token sdpa path it mirrors."""
    import torch
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    base = base_model(model)
    if type(base) is not LlamaForCausalLM or base.training or _one_token_sdpa() is None:
        return None
    config, inner = base.config, base.model
    if config._attn_implementation != "sdpa" or inner.rotary_emb.rope_type != "default":
        return None
    if getattr(config, "sliding_window", None) or "forward" in base.__dict__:
        return None
    norms = [inner.norm, *(n for y in inner.layers for n in (y.input_layernorm, y.post_attention_layernorm))]
    if type(inner.embed_tokens) is not torch.nn.Embedding or any(type(norm) is not LlamaRMSNorm for norm in norms):
        return None
    if any(hasattr(module, "_hf_hook") for module in base.modules()):  # accelerate's offloading or device maps
        return None
    return PlainLlamaStep(base)


@functools.cache
def _one_token_sdpa() -> tuple[Callable[..., bool], Callable[..., Any] | None, Callable[..., Any]] | None:
    """transformers' choice between sdpa's grouped-query mode and its other way for one query token (called with
    the mask, keys and values), and the two other ways: packing the query's heads (``pack_gqa``, later releases;
    None before) and repeating the key and value heads (``repeat_kv``, which releases without ``pack_gqa`` use,
    e.g. 5.17). None where this transformers has neither helper: the step is then not taken."""
    try:
        from transformers.integrations import sdpa_attention

        uses_gqa, repeat_kv = sdpa_attention.use_gqa_in_sdpa, sdpa_attention.repeat_kv
    except (ImportError, AttributeError):
        return None
    if len(inspect.signature(uses_gqa).parameters) == 2:  # early 5.x releases decide from the mask and keys alone
        decide = uses_gqa

        def uses_gqa(mask: Any, keys: Any, values: Any) -> bool:
            return decide(mask, keys)

    return uses_gqa, getattr(sdpa_attention, "pack_gqa", None), repeat_kv


@contextlib.contextmanager
def plain_decoding_steps(model: Any) -> Iterator[bool]:
    """Within the block, ``model``'s decoding steps (one token per row, with a ``DynamicCache`` and position
    ids, as ``generate`` calls them) take :func:`plain_step`, made as ``model`` is on entering; any other call,
    transformers' forward. Yields whether the plain step applies to ``model``."""
    step = plain_step(model)
    if step is None:
        yield False
        return
    base, forward = step.model, step.model.forward

    @functools.wraps(forward)  # generate reads the forward's signature (it passes position ids if it names them)
    def routed(*args: Any, **kwargs: Any) -> Any:
        return step.output(kwargs) if not args and step.takes(kwargs) else forward(*args, **kwargs)

    base.forward = routed
    try:
        yield True
    finally:
        del base.forward  # the class's again: plain_step refuses a model with an instance forward of its own


def _linear(module: Any) -> Callable[[Any], Any]:
    """``x`` [rows, features] through ``module`` as transformers' decoding step sends [rows, 1, features]."""
    import torch
    from torch.nn.functional import linear

    from aloekit.agents.backends.packed import _packed_class, in_bfloat16

    if type(module) is torch.nn.Linear:
        return lambda x: linear(x[:, None], module.weight, module.bias)[:, 0]
    if type(module) is _packed_class():  # its forward for a step, without the module call
        return lambda x: in_bfloat16(module.packed_matmul, x)
    return lambda x: module(x[:, None])[:, 0]  # anything else (a peft adapter's layer): the module itself


def _joined(owner: Any, modules: list[Any]) -> Callable[[Any], Any]:
    """``x`` [rows, features] through each of ``modules`` (which take the same input), their outputs side by
    side: one kernel call where each is packed with the same kind of Q4_1 kernel and it can join them (kept on
    ``owner`` while the same packed weights are there), else one call each."""
    import torch

    from aloekit.agents.backends.packed import _packed_class, in_bfloat16, joined_product

    matmuls = [getattr(module, "packed_matmul", None) for module in modules]
    if all(type(m) is _packed_class() for m in modules):
        kept = owner.__dict__.get("_joined_matmul")
        if kept is None or kept[0] != matmuls:  # the matmuls compare by identity: the same packed weights
            kept = owner._joined_matmul = (matmuls, joined_product(matmuls))
        if (joined := kept[1]) is not None:
            return lambda x: in_bfloat16(joined, x)
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
        self.uses_gqa, self.pack_gqa, self.repeat_kv = _one_token_sdpa() or (None, None, None)  # plain_step checked
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.layers = [
            (layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn.scaling, layer.mlp.act_fn,
             _joined(layer.self_attn, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
             _linear(layer.self_attn.o_proj), _joined(layer.mlp, [layer.mlp.gate_proj, layer.mlp.up_proj]),
             _linear(layer.mlp.down_proj))
            for layer in model.model.layers[: config.num_hidden_layers]
        ]  # fmt: skip
        self.head = _linear(model.lm_head)
        # the output's name for the cache: ``cache`` in later transformers 5 releases, ``past_key_values`` before
        self.cache_field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        self.output_class = CausalLMOutputWithPast

    def takes(self, kwargs: dict[str, Any]) -> bool:
        """Whether a forward call with ``kwargs`` is a decoding step this class computes: one token per row,
        position ids, a ``DynamicCache`` of full-attention layers, a mask (if any) over it and the token, and
        (early 5.x releases pass one) a cache position just past the cache."""
        import torch
        from transformers import DynamicCache

        ids, mask, positions = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("position_ids")
        cache, at = kwargs.get("cache", kwargs.get("past_key_values")), kwargs.get("cache_position")
        if type(cache) is not DynamicCache or any(cache.is_sliding):
            return False
        cached = cache.get_seq_length()
        return (
            all(key in STEP_KEYWORDS for key, value in kwargs.items() if value is not None)
            and isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] == 1
            and isinstance(positions, torch.Tensor) and positions.shape == ids.shape
            and (at is None or isinstance(at, torch.Tensor) and at.shape == (1,) and int(at) == cached)
            and (mask is None  # every position counts
                 or isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == cached + 1)
            and kwargs.get("use_cache") is not False and kwargs.get("return_dict") is not False
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

        uses_gqa, pack_gqa, repeat_kv = self.uses_gqa, self.pack_gqa, self.repeat_kv
        inner, rows, intermediate = self.model.model, input_ids.shape[0], self.intermediate
        heads, kv_heads, dim, half = self.heads, self.kv_heads, self.head_dim, self.head_dim // 2
        hidden = embedding(input_ids[:, 0], inner.embed_tokens.weight)
        rotary = inner.rotary_emb
        freqs = position_ids[..., None].float() * rotary.inv_freq.to(device=hidden.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)  # [rows, 1, head_dim]: one position, all heads alike
        cos = (angles.cos() * rotary.attention_scaling).to(hidden.dtype)
        sin = (angles.sin() * rotary.attention_scaling).to(hidden.dtype)
        # transformers' mask for one query token: none where every position counts
        everywhere = attention_mask is None or bool(attention_mask.all())
        mask = None if everywhere else attention_mask.bool()[:, None, None, :]
        groups = heads // kv_heads
        for index, (norm, post_norm, scaling, act, qkv, o, gate_up, down) in enumerate(self.layers):
            x = _rms_norm(hidden, norm)
            projected = qkv(x).view(rows, heads + 2 * kv_heads, dim)  # query heads, key heads, value heads
            rotated = projected[:, : heads + kv_heads]  # queries and keys rotate alike
            rotated = rotated * cos + torch.cat((-rotated[..., half:], rotated[..., :half]), dim=-1) * sin
            keys, values = cache.update(rotated[:, heads:, None], projected[:, heads + kv_heads :, None], index)
            queries, gqa = rotated[:, :heads, None], {}  # [rows, heads, 1, head_dim]; then as transformers calls sdpa
            if groups > 1 and uses_gqa(mask, keys, values):
                gqa = {"enable_gqa": True}
            elif groups > 1 and pack_gqa is not None:
                queries = pack_gqa(queries, groups)
            elif groups > 1:
                keys, values = repeat_kv(keys, groups), repeat_kv(values, groups)
            attended = scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scaling, **gqa)
            hidden = hidden + o(attended.reshape(rows, heads * dim))
            gated = gate_up(_rms_norm(hidden, post_norm))
            # contiguous: torch's silu rounds a strided input differently in the last bit
            hidden = hidden + down(act(gated[:, :intermediate].contiguous()) * gated[:, intermediate:])
        return self.head(_rms_norm(hidden, inner.norm))
