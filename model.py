"""
LLaMA in one file: the architecture, Hugging Face weights in and out (safetensors + config.json, no transformers),
and KV-cached generation.

Module names are Hugging Face's (`model.layers.N.self_attn.q_proj`, ..., `lm_head`), so an HF checkpoint's tensor
names are our state_dict keys and PEFT adapter keys map 1:1. Rotary embeddings use HF's rotate-half layout, so
HF checkpoints load with no q/k permutation. Numerics follow HF's LlamaForCausalLM op for op (RMSNorm in fp32,
rotary tables in fp32 cast to the activation dtype) so logits agree to float rounding.
"""
import json
import math
import os
import platform
import shutil
import warnings
from contextlib import contextmanager
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
    n_kv_heads: Optional[int] = None  # < n_heads: grouped-query attention (Llama-2 70B); None: = n_heads
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


# Published shapes. LLaMA-1 (Touvron et al. 2023a, Table 2) and Llama-2 (2023b); Llama-2 uses eps 1e-5 and 4k context.
PRESETS = {
    "llama-7b": dict(dim=4096, n_layers=32, n_heads=32, intermediate_size=11008),
    "llama-13b": dict(dim=5120, n_layers=40, n_heads=40, intermediate_size=13824),
    "llama-33b": dict(dim=6656, n_layers=60, n_heads=52, intermediate_size=17920),
    "llama-65b": dict(dim=8192, n_layers=80, n_heads=64, intermediate_size=22016),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, intermediate_size=11008, norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, intermediate_size=13824, norm_eps=1e-5, max_seq_len=4096),
    "llama2-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, intermediate_size=28672, norm_eps=1e-5,
                       max_seq_len=4096),
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
    if kind == "llama3":
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


# oneDNN's linear: in every x86 build of torch (measured only there, so used only there)
ONEDNN = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def linear(layer, x):
    """layer(x) by the fastest route on CPU; exactly layer(x) on GPU, for other modules and for eager bf16/fp16.

    On x86 CPUs in fp32, oneDNN's linear is faster than MKL's sgemm behind nn.Linear: it JIT-compiles its kernels for
    the CPU at hand (MKL's are tuned for Intel's). Measured on this 2-core AMD EPYC: 1.05-1.25x for training- and
    prompt-sized products, ~2x for a one-token step, whose matrix-vector work MKL streams at ~10 GB/s on one thread.
    With autograd, `OneDNNLinear` keeps that for the forward and for grad_x. In compiled code, a one-token step is a
    broadcast multiply-sum that inductor emits as one multi-threaded reduction (~25 GB/s); other compiled products
    stay layer(x). Every route sums in another order than MKL: results agree to float rounding (tested).
    """
    if type(layer) is not nn.Linear or x.device.type != "cpu":
        return layer(x)
    if torch.compiler.is_compiling():
        return (x.unsqueeze(-2) * layer.weight).sum(-1) if x.numel() <= 4 * x.size(-1) else layer(x)
    if not ONEDNN or x.dtype != torch.float32 or layer.weight.dtype != torch.float32:
        return layer(x)
    if torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad):
        return OneDNNLinear.apply(x, layer.weight)
    return onednn_linear(x, layer.weight)


def onednn_linear(x, weight):
    """x @ weight.T by oneDNN (CPU, fp32)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """x @ weight.T with oneDNN for the forward and for grad_x = g @ weight (a transposed copy of the weight, a few
    MB, is cheaper than MKL's slower GEMM); grad_weight = g.T @ x stays MKL's, which is faster for that layout."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)  # what nn.Linear's autograd saves too
        return onednn_linear(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.size(-1))
        grad_x = onednn_linear(g, weight.t().contiguous()).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = g.t() @ x.reshape(-1, x.size(-1)) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


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
        q = linear(self.q_proj, x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = linear(self.k_proj, x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = linear(self.v_proj, x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
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
        return linear(self.o_proj, y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x):
        return linear(self.down_proj, swiglu(linear(self.gate_proj, x), linear(self.up_proj, x)))


def swiglu(gate, up):
    """silu(gate) * up, through `SwiGLU` (same bits, less memory), except in compiled code."""
    if torch.compiler.is_compiling():
        return F.silu(gate) * up  # inductor fuses it
    return SwiGLU.apply(gate, up)


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up with autograd's own formulas (bit-identical), but saving gate and up only: silu(gate) is
    recomputed in backward (one cheap pass) instead of kept, and forward and backward each allocate one
    (tokens x intermediate) tensor fewer. On CPU every fresh tensor that size pays its page faults again."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_gate = None
        if ctx.needs_input_grad[0]:  # silu'(gate) * (grad * up), written over its own input
            grad_gate = grad * up
            torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        grad_up = F.silu(gate).mul_(grad) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


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
        self._loss_workspace = {}  # LinearCrossEntropy's CPU logits buffer, kept from one step to the next
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

    @torch.no_grad()
    def init_weights(self, std=0.02, seed=0):
        """From-scratch init (HF's initializer_range=0.02); residual outputs scaled by 1/sqrt(2 * n_layers).

        Each parameter is drawn whole from one seeded generator, then copied (for an FSDP-sharded parameter, this
        rank's rows only): the weights are the same for any number of processes.
        """
        gen = torch.Generator().manual_seed(seed)
        out_std = std / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                full = torch.ones(p.shape)
            else:
                s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                full = torch.empty(p.shape).normal_(0.0, s, generator=gen)
            copy_param_(p, full)
        self.init_rope()

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() counts a tied weight once

    # --- forward -------------------------------------------------------------------------------
    def forward(self, idx, targets=None, start_pos=0, reduction="mean", return_logits=True):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        With targets (B, T), loss is the cross-entropy over positions whose target is not -100: their mean, or with
        reduction="sum" their sum (the training loop normalises by the whole global batch's token count).
        return_logits=False (training) computes the loss chunk by chunk without ever holding the full (B, T, V)
        logits, and returns None for them. start_pos is the position of idx[:, 0] (decoding with a KV cache).
        """
        h = self.hidden(idx, start_pos)
        if targets is not None and not return_logits and type(self.lm_head) is nn.Linear:
            total = LinearCrossEntropy.apply(h.reshape(-1, h.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                             self._loss_workspace)
            return None, total if reduction == "sum" else total / (targets != -100).sum()
        logits = linear(self.lm_head, h)
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

        compile=True runs the one-token steps through torch.compile (the prompt's prefill stays eager): the first
        call pays the compilation (~30 s on CPU), later ones decode ~2x faster than eager on CPU (see `linear`).
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
            logits = linear(self.lm_head, self.hidden(idx, start_pos=0)[:, -1:])  # the prompt's last position only
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

    # --- Hugging Face checkpoints ------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu"):
        return load_hf(path, dtype=dtype, device=device)


class LinearCrossEntropy(torch.autograd.Function):
    """sum over targets != -100 of cross_entropy(h @ W^T, targets), a chunk of rows at a time.

    The logits of one chunk exist at once (fp32, ~128 MB for 32k vocab), and their gradient (softmax - one-hot) is
    turned into the gradients of h and W in the same pass, so backward has nothing to recompute and the (N, V)
    logits and their gradient are never materialised. W's gradient is skipped when W is frozen (LoRA).
    """

    chunk_elems = 2**25  # logits elements per chunk

    @staticmethod
    def forward(ctx, h, weight, targets, workspace=None):
        N, V = h.size(0), weight.size(0)
        chunk = max(1, LinearCrossEntropy.chunk_elems // V)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        fp32 = h.dtype == torch.float32
        grad_w = None
        if need_w:  # fp32: addmm_ accumulates in place (beta=0 on the first chunk: no zero fill); else fp32 sums
            alloc = torch.empty if fp32 and N else torch.zeros
            grad_w = alloc(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        # one fp32 buffer for every chunk's logits, then softmax and gradient, all in place. On CPU each fresh 128 MB
        # tensor pays its page faults again, so a workspace dict (the model's) keeps it between calls; nothing in it
        # outlives a call. GPU allocators keep their blocks anyway.
        workspace = workspace if h.device.type == "cpu" else None
        buf = workspace.get("logits") if workspace is not None else None
        if buf is None or buf.size(0) < min(chunk, N) or buf.size(1) != V:
            buf = torch.empty(min(chunk, N), V, dtype=torch.float32, device=h.device)
        if workspace is not None:
            workspace["logits"] = buf
        for s in range(0, N, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            z = buf[:len(tc)]
            if fp32:
                torch.mm(hc, weight.t(), out=z)
            else:
                z.copy_(hc @ weight.t())
            valid = tc != -100
            rows, tgt = torch.arange(len(tc), device=h.device), tc.clamp(min=0)
            zmax, target_logit = z.amax(-1, keepdim=True), z[rows, tgt]
            sumexp = z.sub_(zmax).exp_().sum(-1, keepdim=True)  # z is now exp(logits - max)
            total += ((zmax + sumexp.log()).squeeze(1) - target_logit).mul(valid).sum()  # logsumexp - target logit
            if need_h or need_w:
                g = z.div_(sumexp)  # softmax
                g[rows, tgt] -= 1.0
                g = g.to(h.dtype)
                # ignored rows are zeroed in the small (rows, dim) operands, not in g: no pass over it, no device sync
                keep = valid[:, None].to(h.dtype)
                if need_h:
                    torch.mm(g, weight, out=grad_h[s:s + chunk]).mul_(keep)
                if need_w and fp32:
                    grad_w.addmm_(g.t(), hc * keep, beta=1.0 if s else 0.0)  # no (V, dim) temporary per chunk
                elif need_w:
                    grad_w += (g.t() @ (hc * keep)).float()
        ctx.grads = grad_h, grad_w.to(weight.dtype) if need_w else None  # ours alone: scaled in place below
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("LinearCrossEntropy: backward twice (retain_graph) is not supported")
        grads, ctx.grads = ctx.grads, None
        return *(g.mul_(grad_out) if g is not None else None for g in grads), None, None


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


# -----------------------------------------------------------------------------
# Hugging Face folders: config.json + model.safetensors (or sharded, or pytorch_model*.bin loaded weights_only)

def args_from_hf_config(cfg, where="config.json"):
    archs = cfg.get("architectures") or []
    if "LlamaForCausalLM" not in archs and cfg.get("model_type") != "llama":
        raise ValueError(f"{where}: architectures={archs} model_type={cfg.get('model_type')!r}; "
                         "only LlamaForCausalLM checkpoints are supported")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ValueError(f"{where}: {flag}=true is not supported (LLaMA has no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act={cfg['hidden_act']!r}; LLaMA uses silu")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}  # transformers v5 / v4 spelling
    kind = rope.get("rope_type", rope.get("type", "default"))
    try:
        return ModelArgs(
            dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads"), vocab_size=cfg["vocab_size"],
            intermediate_size=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta", rope.get("rope_theta", 10000.0)),
            rope_scaling=None if kind == "default" else dict(rope),
            max_seq_len=cfg.get("max_position_embeddings", 2048), head_dim=cfg.get("head_dim"),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False))
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


def hf_config(args: ModelArgs, dtype=torch.float32):
    rope = {"rope_type": "default", **(args.rope_scaling or {}), "rope_theta": args.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": args.dim, "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim, "vocab_size": args.vocab_size,
        "intermediate_size": args.intermediate_size, "rms_norm_eps": args.norm_eps, "hidden_act": "silu",
        "rope_theta": args.rope_theta, "rope_scaling": None if args.rope_scaling is None else rope,
        "rope_parameters": rope,  # transformers >= 5 reads this, older versions rope_theta/rope_scaling
        "max_position_embeddings": args.max_seq_len, "tie_word_embeddings": args.tie_word_embeddings,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def checkpoint_files(path):
    """-> (list of weight files, loader kind). Prefers safetensors; *.bin only through torch.load(weights_only)."""
    for index, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        ip = os.path.join(path, index)
        if os.path.isfile(ip):
            with open(ip) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
            if missing:
                raise FileNotFoundError(f"{ip} names shard(s) that are not there: {', '.join(missing)}")
            return [os.path.join(path, f) for f in files], kind
    for single, kind in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)], kind
    raise FileNotFoundError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def iter_checkpoint_tensors(files, kind):
    """Yield (name, tensor) one at a time, so loading never holds a second full copy of the weights."""
    if kind == "safetensors":
        from safetensors import safe_open
        for fp in files:
            with safe_open(fp, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
    else:
        for fp in files:
            sd = torch.load(fp, map_location="cpu", weights_only=True, mmap=True)
            yield from sd.items()
            del sd


def read_hf_config(path):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path} does not exist")
    cp = os.path.join(path, "config.json")
    if not os.path.isfile(cp):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face LLaMA folder)")
    with open(cp) as f:
        return args_from_hf_config(json.load(f), where=cp)


def load_hf(path, dtype=torch.float32, device="cpu"):
    """Build a Transformer from an HF LLaMA folder, tensor by tensor, straight into dtype on device."""
    args = read_hf_config(path)
    files, kind = checkpoint_files(path)
    with torch.device("meta"):
        model = Transformer(args)
    materialize(model, device, dtype)
    load_state_dict_streaming(model, iter_checkpoint_tensors(files, kind), where=path)
    return model.eval()


def materialize(model, device, dtype=None):
    """Give a meta-device model (maybe FSDP-sharded) real, uninitialised storage on device, keeping tied weights
    tied (tensor swapping keeps each Parameter object, so a shared one stays shared), and build the rope tables."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to_empty(device=device)
        if dtype is not None:
            model.to(dtype)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    model.init_rope()
    return model


@torch.no_grad()
def copy_param_(p, full):
    """p.copy_(full), where p may be an FSDP2-sharded DTensor: then only this rank's shard is copied, no traffic."""
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        full = distribute_tensor(full.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
        p.to_local().copy_(full.to_local())
    else:
        p.copy_(full)


@torch.no_grad()
def load_state_dict_streaming(model, named_tensors, where="checkpoint", names=None):
    """Copy (name, tensor) pairs into model's parameters with strict name and shape checks.
    names: the parameters the checkpoint must provide (default all; e.g. the base without LoRA layers)."""
    params = dict(model.named_parameters())  # a tied lm_head shows up once, under model.embed_tokens
    if names is not None:
        params = {n: params[n] for n in names if n in params}
    expected = set(params)
    seen, unexpected = set(), []
    for name, t in named_tensors:
        if name not in params:
            if name == "lm_head.weight" and model.args.tie_word_embeddings:
                continue  # some tied checkpoints store the shared matrix twice
            if not name.endswith("rotary_emb.inv_freq"):  # older exports saved this derived buffer
                unexpected.append(name)
            continue
        p = params[name]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{where}: tensor {name} has shape {tuple(t.shape)} but the model expects {tuple(p.shape)}")
        copy_param_(p, t)
        seen.add(name)
    missing = sorted(expected - seen)
    if missing or unexpected:
        msg = [f"{where}: checkpoint does not match the model."]
        if missing:
            msg.append(f"missing tensors ({len(missing)}): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            msg.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:10])}"
                       f"{' ...' if len(unexpected) > 10 else ''}")
        raise ValueError(" ".join(msg))


def save_hf(model_or_state, args: ModelArgs, out_dir, dtype=torch.bfloat16, tokenizer_path=None,
            max_shard_bytes=5 * 2**30):
    """Write an HF LLaMA folder (config.json, safetensors shards + index, tokenizer.model) atomically.

    model_or_state is a Transformer or a full state dict (e.g. gathered from FSDP). The folder is written under
    a temporary name and renamed at the end, so a crash never leaves a half-written export.
    """
    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    if args.tie_word_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # safetensors stores shared tensors once
    with atomic_folder(out_dir) as tmp:
        _write_hf_folder(tmp, sd, args, dtype, tokenizer_path, max_shard_bytes)
    return os.path.abspath(out_dir)


def _write_hf_folder(tmp, sd, args, dtype, tokenizer_path, max_shard_bytes):
    from safetensors.torch import save_file
    shards, cur, size = [], {}, 0  # greedy sharding in key order, like HF's save_pretrained
    for name, t in sd.items():
        t = t.detach().to("cpu", dtype).contiguous()
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t
        size += nbytes
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(tmp, fname), metadata={"format": "pt"})
            for name, t in shard.items():
                weight_map[name] = fname
                total += t.numel() * t.element_size()
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(args, dtype), f, indent=2)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f, indent=2)
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))


@contextmanager
def atomic_folder(out_dir):
    """Yield a fresh temporary folder beside out_dir; when the block completes, it replaces out_dir in one rename,
    so a crash never leaves a half-written folder under the final name."""
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    yield tmp
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


# -----------------------------------------------------------------------------
# our own training checkpoints: torch.distributed.checkpoint folders written by train.py

def is_dcp_checkpoint(path):
    return os.path.isfile(os.path.join(path, ".metadata"))


def load_model(path, dtype=torch.float32, device="cpu"):
    """An HF folder or one of train.py's checkpoint folders (which carry an HF config.json beside the shards)."""
    if not is_dcp_checkpoint(path):
        return load_hf(path, dtype=dtype, device=device)
    import torch.distributed.checkpoint as dcp
    keys = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    if any(".lora_A." in k for k in keys):
        raise ValueError(f"{path} is a LoRA fine-tuning checkpoint: load its base model and the adapter "
                         "(finetune_qa.py writes out_dir/adapter; eval_qa.py --lora=ADAPTER_DIR)")
    args = read_hf_config(path)
    with torch.device("meta"):
        model = Transformer(args)
    materialize(model, "cpu")  # uninitialised fp32 storage: DCP loads into existing tensors, resharding as needed
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # loading in one process is what we want here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)
    model.load_state_dict(state["model"])
    return model.to(device=device, dtype=dtype).eval()
