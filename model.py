"""
LLaMA in one file: the architecture and KV-cached generation, in plain PyTorch.

Module names are Hugging Face's (`model.layers.N.self_attn.q_proj`, ..., `lm_head`), so an HF checkpoint's tensor
names are our state_dict keys and PEFT adapter keys map 1:1. Rotary embeddings use HF's rotate-half layout, so
HF checkpoints load with no q/k permutation. Numerics follow HF's LlamaForCausalLM op for op (RMSNorm in fp32,
rotary tables in fp32 cast to the activation dtype) so logits agree to float rounding.

Reading and writing checkpoints (HF folders, GGUF, our training checkpoints) lives in weights.py; the training
loss's chunked cross-entropy in kernels.py. This file needs only torch.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None  # < n_heads: grouped-query attention (Llama-2 70B, Llama-3); None: = n_heads
    vocab_size: int = 32000
    intermediate_size: int = 11008
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # HF's dict: {"rope_type": "linear"|"llama3", "factor": ..., ...}
    max_seq_len: int = 2048
    head_dim: Optional[int] = None  # None: dim // n_heads
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")


# Published shapes. LLaMA-1 (Touvron et al. 2023a, Table 2); Llama-2 (2023b): eps 1e-5, 4k context; Llama-3 (2024):
# 128k vocabulary, 8 KV heads, theta 5e5; 3.1 and 3.2 add llama3 rope scaling, and 3.2-1B ties its embeddings.
LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
PRESETS = {
    "llama-7b": dict(dim=4096, n_layers=32, n_heads=32, intermediate_size=11008),
    "llama-13b": dict(dim=5120, n_layers=40, n_heads=40, intermediate_size=13824),
    "llama-33b": dict(dim=6656, n_layers=60, n_heads=52, intermediate_size=17920),
    "llama-65b": dict(dim=8192, n_layers=80, n_heads=64, intermediate_size=22016),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, intermediate_size=11008, norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, intermediate_size=13824, norm_eps=1e-5, max_seq_len=4096),
    "llama2-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, intermediate_size=28672, norm_eps=1e-5,
                       max_seq_len=4096),
    "llama3-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, intermediate_size=14336, vocab_size=128256,
                      norm_eps=1e-5, rope_theta=500000.0, max_seq_len=8192),
    "llama3.1-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, intermediate_size=14336, vocab_size=128256,
                        norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072,
                        rope_scaling=dict(LLAMA3_ROPE, factor=8.0)),
    "llama3.2-1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, intermediate_size=8192, vocab_size=128256,
                        norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072, tie_word_embeddings=True,
                        rope_scaling=dict(LLAMA3_ROPE, factor=32.0)),
}


def preset(name, **overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return ModelArgs(**{**PRESETS[name], **overrides})


# -----------------------------------------------------------------------------
# building blocks

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 (as HF does), scale in the input dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(args: ModelArgs):
    """Inverse frequencies of the rotary embedding, with HF's `linear` and `llama3` context scaling."""
    d = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = args.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":  # long wavelengths slowed by `factor`, short ones kept, a smooth ramp between
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / hi) * ~(wavelen > old_len / lo)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def rope_tables(args: ModelArgs, device=None):
    inv_freq = rope_inv_freq(args).to(device)
    t = torch.arange(args.max_seq_len, device=device, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # rotate-half layout: [f0..f_{d/2-1}, f0..f_{d/2-1}]
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    # x: (B, H, T, D); cos/sin: (T, D) in fp32, cast like HF does
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class KVCache(nn.Module):
    def __init__(self, batch_size, max_len, n_kv_heads, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start, k, v):
        """Write k, v at positions start.., return all keys/values up to the last written position."""
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.cache: Optional[KVCache] = None

    def forward(self, x, cos, sin, start_pos=0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cache is not None:
            k, v = self.cache.update(start_pos, k, v)
        S = k.size(2)
        if S == T:  # no cached prefix: plain causal attention
            mask, causal = None, T > 1
        elif T == 1:  # one new token sees every cached position
            mask, causal = None, False
        else:  # T new tokens after S - T cached ones: query i sees keys 0 .. S - T + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            causal = False
        gqa = self.n_kv_heads != self.n_heads  # grouped-query attention: each KV head serves a group of heads
        if gqa and mask is not None:  # GPU kernels that take a mask lack enable_gqa: copy the shared heads instead
            rep = self.n_heads // self.n_kv_heads
            k, v, gqa = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, start_pos=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """The decoder stack; named `model` inside Transformer so keys read `model.layers.N...` like HF's."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)


# -----------------------------------------------------------------------------
# the model

class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.activation_checkpointing = False
        self._compiled_forward = None  # built by compiled_decoder() on first use
        self.model = LlamaModel(args)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # rotary tables are derived, not learned: non-persistent, recomputed after meta-device init
        cos, sin = rope_tables(args, device=self.lm_head.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # --- initialisation -------------------------------------------------------------------------
    def init_rope(self):
        # assigning (not copying) keeps the tables fp32 even after model.to(bfloat16) or meta-device init
        self.rope_cos, self.rope_sin = rope_tables(self.args, device=self.rope_cos.device)

    def init_tensors(self, std=0.02, seed=0):
        """Yield (name, full tensor) of a from-scratch init (HF's initializer_range=0.02), residual outputs scaled
        by 1/sqrt(2 * n_layers). Each tensor is drawn whole from one seeded generator, so the weights do not depend
        on how the model is sharded (weights.load_state_dict_streaming copies each rank's part)."""
        gen = torch.Generator().manual_seed(seed)
        out_std = std / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                yield name, torch.ones(p.shape)
            else:
                s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                yield name, torch.empty(p.shape).normal_(0.0, s, generator=gen)

    @torch.no_grad()
    def init_weights(self, std=0.02, seed=0):
        """init_tensors() copied into an unsharded model."""
        params = dict(self.named_parameters())
        for name, full in self.init_tensors(std, seed):
            params[name].copy_(full)
        self.init_rope()

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() counts a tied weight once

    # --- forward -------------------------------------------------------------------------------
    def forward(self, idx, targets=None, start_pos=0, reduction="mean", loss_fn=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        With targets (B, T), loss is the cross-entropy over positions whose target is not -100: their mean, or with
        reduction="sum" their sum (the training loop normalises by the whole global batch's token count).
        loss_fn(h, lm_head, targets) -> summed loss replaces logits + F.cross_entropy (training passes
        kernels.linear_cross_entropy, which never holds the full (B, T, V) logits); logits are then None.
        start_pos is the position of idx[:, 0] (decoding with a KV cache).
        """
        h = self.hidden(idx, start_pos)
        if targets is not None and loss_fn is not None:
            total = loss_fn(h.reshape(-1, h.size(-1)), self.lm_head, targets.reshape(-1))
            return None, total if reduction == "sum" else total / (targets != -100).sum()
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                                   reduction=reduction)
        return logits, loss

    def hidden(self, idx, start_pos=0):
        """The final normalised hidden states (B, T, dim): apply lm_head only where logits are needed."""
        T = idx.size(1)
        if start_pos + T > self.args.max_seq_len:
            raise ValueError(f"sequence end {start_pos + T} exceeds max_seq_len={self.args.max_seq_len}")
        cos, sin = self.rope_cos[start_pos:start_pos + T], self.rope_sin[start_pos:start_pos + T]
        x = self.model.embed_tokens(idx)
        for layer in self.model.layers:
            if self.activation_checkpointing and self.training:  # recompute the block in backward: less memory
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, start_pos, use_reentrant=False)
            else:
                x = layer(x, cos, sin, start_pos)
        return self.model.norm(x)

    # --- generation -------------------------------------------------------------------------
    def setup_cache(self, batch_size, max_len, dtype=None, device=None):
        p = self.lm_head.weight
        for layer in self.model.layers:
            layer.self_attn.cache = KVCache(batch_size, max_len, self.args.n_kv_heads, self.args.head_dim,
                                            dtype or p.dtype, device or p.device)

    def clear_cache(self):
        for layer in self.model.layers:
            layer.self_attn.cache = None

    def compiled_decoder(self):
        """forward, compiled once per model for one-token decoding steps (any position, cache length, prompt)."""
        if self._compiled_forward is None:
            # dynamic: start_pos and the cache length change every step and every prompt; one graph serves them all
            self._compiled_forward = torch.compile(self.forward, dynamic=True)
        return self._compiled_forward

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, eos_id=None, generator=None, compile=False):
        """Continue idx (B, T) by up to max_new_tokens; temperature 0 is greedy. Stops when every row has hit eos_id.

        compile=True runs the one-token steps through torch.compile (the prompt's prefill stays eager); the first
        call pays the compilation (tens of seconds on CPU).
        """
        step = self.compiled_decoder() if compile else self
        B, T = idx.shape
        total = min(T + max_new_tokens, self.args.max_seq_len)
        capacity = total
        if compile:  # the graph is specialised to the cache's size: round it up so most prompts share one graph
            capacity = min(self.args.max_seq_len, max(256, 1 << (total - 1).bit_length()))
        self.setup_cache(B, capacity, device=idx.device)
        try:
            out = [idx]
            done = torch.zeros(B, dtype=torch.bool, device=idx.device)
            logits = self.lm_head(self.hidden(idx, start_pos=0)[:, -1:])  # the prompt's last position only
            pos = T
            while pos < total:
                nxt = sample_next(logits[:, -1], temperature, top_k, generator)
                if eos_id is not None:  # rows already finished keep emitting eos
                    nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                    done |= nxt == eos_id
                out.append(nxt[:, None])
                if (eos_id is not None and bool(done.all())) or pos + 1 >= total:
                    break
                logits, _ = step(nxt[:, None], start_pos=pos)
                pos += 1
            return torch.cat(out, dim=1)
        finally:
            self.clear_cache()


def sample_next(logits, temperature=0.0, top_k=None, generator=None):
    """logits (B, V) -> next ids (B,). temperature 0 is argmax (greedy)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
