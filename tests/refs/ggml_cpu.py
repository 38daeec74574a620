"""
Outside CI: llama.cpp's CPU arithmetic for a Q8_0 model, op for op, in torch, applied to our model as our reader
loads it. It answers one question: when llama.cpp's Q8_0 tokens differ from our fp32 model's, is it the file or the
arithmetic? llama.cpp multiplies Q8_0 weights by activations it rounds to 8 bits itself, and its exp, sqrt, rope and
dot products round in their own order; on SmolLM2 one such rounding (a tie at -14.5 that ggml rounds one way and an
fp32 reference never sees) moves a logit by 0.3. With every op below the logits agree with llama.cpp's bit for bit.

What it follows (ggml's x86 kernels built with AVX2+FMA, GGML_NATIVE=OFF, as llama-cpp-python 0.3.36 builds them;
each checked bit for bit against llama.cpp's own intermediate tensors, dumped with its eval callback):
- quantize_row_q8_0: per 32 values d = amax/127 stored as fp16, q = round-half-even(x * (127/amax));
- ggml_vec_dot_q8_0_q8_0: 8 lanes of 4-product integer sums, fma'd per block with fp16(d_w) * fp16(d_x), then a
  fixed horizontal sum; the same order for one token and for a batch;
- rms_norm: a double sum of float squares, float mean, 1/sqrtf (correctly rounded), then the weight;
- rope (NORM mode, as llama.cpp runs LLaMA): theta multiplied up by powf(base, -2/n_dims) in float, glibc's
  cosf/sinf, and the compiler's fused multiply-adds (x0*cos - x1*sin as fma(x0, cos, -(x1*sin)));
- K.Q: ggml_vec_dot_f32 (4 x 8 fma accumulators); softmax: ggml_v_expf (ARM's polynomial, AVX2 variant), per-8
  float sums added in double; P.V: llamafile's tinyBLAS (one 8-lane fma accumulator, then a fixed hsum) for a
  batch, ggml_vec_dot_f32 for one token;
- SwiGLU: x / (1 + ggml_v_expf(-x)) * g.
The KV cache is F32 (llama.cpp's `type_k=type_v=f32`, `-ctk f32 -ctv f32`) and flash attention is off: with its
default F16 cache or flash attention llama.cpp computes differently again (and its own greedy tokens change).
"""
import ctypes
import ctypes.util

import torch

_libm = ctypes.CDLL(ctypes.util.find_library("m"))
for _f in ("powf", "cosf", "sinf", "expf", "sqrtf"):
    getattr(_libm, _f).restype = ctypes.c_float
_libm.powf.argtypes = [ctypes.c_float, ctypes.c_float]
_libm.cosf.argtypes = _libm.sinf.argtypes = _libm.expf.argtypes = _libm.sqrtf.argtypes = [ctypes.c_float]


def fma(a, b, c):
    """float32 fused multiply-add: a*b is exact in float64 for float32 operands, one rounding at the end."""
    return (a.double() * b.double() + c.double()).float()


def f32(v):
    return torch.tensor(v, dtype=torch.float32)


def _bits(x):
    return x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _from_bits(b):
    b = b & 0xFFFFFFFF
    return torch.where(b >= 2 ** 31, b - 2 ** 32, b).to(torch.int32).view(torch.float32)


def v_expf(x):
    """ggml_v_expf (AVX2+FMA): exp by a degree-5 polynomial on a reduced argument, scaled by 2^n through the bits."""
    x = x.float()
    r = f32(float.fromhex("0x1.8p23"))
    z = fma(x, f32(float.fromhex("0x1.715476p+0")), r)
    n = z - r
    b = fma(-n, f32(float.fromhex("0x1.7f7d1cp-20")), fma(-n, f32(float.fromhex("0x1.62e4p-1")), x))
    e = (_bits(z) << 23) & 0xFFFFFFFF
    k = _from_bits(e + _bits(f32(1.0)))
    u = b * b
    j = fma(fma(fma(f32(float.fromhex("0x1.0e4020p-7")), b, f32(float.fromhex("0x1.573e2ep-5"))), u,
                fma(f32(float.fromhex("0x1.555e66p-3")), b, f32(float.fromhex("0x1.fffdb6p-2")))),
            u, f32(float.fromhex("0x1.ffffecp-1")) * b)
    res = fma(j, k, k)
    c = n.abs() > 126
    if c.any():  # |n| > 126: scale in two steps; > 192: overflow to inf or underflow to 0
        g = torch.where(n <= 0, 0x82000000, 0).to(torch.int64)
        s1, s2 = _from_bits(g + 0x7F000000), _from_bits(e - g)
        res = torch.where(n.abs() > 192, s1 * s1, torch.where(c, fma(s2, j, s2) * s1, res))
    return res


def libm_expf(x):
    return torch.tensor([_libm.expf(float(v)) for v in x.reshape(-1)], dtype=torch.float32).reshape(x.shape)


# ---------------------------------------------------------------------------------------------------------------
# the ops

def q8_0_blocks(w):
    """A dequantized Q8_0 weight (rows, cols) -> (q (rows, B, 32), d (rows, B)): every block of the file holds a
    value of magnitude 127 (d = amax/127 when quantizing), so d = amax/127 is exact and q = w/d integral."""
    b = w.detach().float().reshape(w.shape[0], -1, 32)
    d = torch.div(b.abs().amax(-1), f32(127.0))
    q = torch.where(d[..., None] > 0, b / d[..., None], torch.zeros_like(b))
    if not (torch.equal(d.half().float(), d) and torch.equal(q, q.round())):
        raise ValueError("not a Q8_0 weight: load the model from a Q8_0 GGUF file")
    return q, d


def quantize_q8_0(x):
    """quantize_row_q8_0 (AVX2) on rows x (T, K) -> q (T, B, 32), d (T, B) (the fp16 scale, as float)."""
    b = x.float().reshape(x.shape[0], -1, 32)
    amax = b.abs().amax(-1)
    inv = torch.where(amax > 0, torch.div(f32(127.0), amax), torch.zeros_like(amax))  # not 127 / amax:
    # torch computes scalar / tensor as a reciprocal times the scalar, two roundings
    return torch.round(b * inv[..., None]), torch.div(amax, f32(127.0)).half().float()


def q8_0_matmul(x, w, chunk=16):
    """x (T, K) @ w.T for a Q8_0 weight w = (q, d), as ggml_vec_dot_q8_0_q8_0 sums (AVX2)."""
    (qw, dw), (qx, dx) = w, quantize_q8_0(x)
    R, B = qw.shape[0], qw.shape[1]
    out = []
    for t in range(0, x.shape[0], chunk):  # (chunk, R, B, 8) lane sums: exact integers in float32
        lanes = torch.einsum("tbli,rbli->trbl", qx[t:t + chunk].reshape(-1, B, 8, 4), qw.reshape(R, B, 8, 4))
        scale = dx[t:t + chunk, None, :] * dw[None]  # fp16 x fp16: exact in float32
        acc = torch.zeros(lanes.shape[0], R, 8)
        for i in range(B):
            acc = fma(scale[:, :, i, None], lanes[:, :, i], acc)
        r = acc[..., 4:] + acc[..., :4]
        out.append((r[..., 0] + r[..., 2]) + (r[..., 1] + r[..., 3]))
    return torch.cat(out)


def rms_norm(x, weight, eps):
    ss = (x * x).double().cumsum(-1)[:, -1]  # a sequential double sum, as the C loop adds
    mean = (ss / x.shape[1]).float()
    scale = torch.div(f32(1.0), torch.sqrt((mean + f32(eps)).double()).float())  # sqrtf: correctly rounded
    return (x * scale[:, None]) * weight


def rope_tables(positions, n_dims, base):
    ts = _libm.powf(float(f32(base)), float(f32(-2.0) / n_dims))
    cos, sin = torch.zeros(len(positions), n_dims // 2), torch.zeros(len(positions), n_dims // 2)
    for r, p in enumerate(positions):
        th = f32(float(p))
        for i in range(n_dims // 2):
            cos[r, i], sin[r, i] = _libm.cosf(float(th)), _libm.sinf(float(th))
            th = th * f32(ts)
    return cos, sin


def rope(x, cos, sin):
    """x (T, H, D) in our rotate-half layout, where pair i is (i, i + D/2) -> llama.cpp's layout, where the
    converter's permuted rows hold each pair adjacent (the order K.Q sums in); the same two products per pair,
    fused as the compiler fuses ggml's."""
    h = x.shape[-1] // 2
    x0, x1, c, s = x[..., :h], x[..., h:], cos[:, None], sin[:, None]
    return torch.stack((fma(x0, c, -(x1 * s)), fma(x0, s, x1 * c)), dim=-1).flatten(-2)


def dot_vec_f32(a, b):
    """ggml_vec_dot_f32 (AVX2) along the last dim: 4 accumulators of 8 lanes over steps of 32, then a reduce;
    a leftover tail is added in double."""
    a, b = torch.broadcast_tensors(a.float(), b.float())
    n, np_ = a.shape[-1], a.shape[-1] & ~31
    acc = [torch.zeros(a.shape[:-1] + (8,)) for _ in range(4)]
    for i in range(0, np_, 32):
        for j in range(4):
            acc[j] = fma(a[..., i + 8 * j:i + 8 * j + 8], b[..., i + 8 * j:i + 8 * j + 8], acc[j])
    x = (acc[0] + acc[2]) + (acc[1] + acc[3])
    t = x[..., :4] + x[..., 4:]
    s = ((t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])).double()
    for i in range(np_, n):
        s = s + (a[..., i] * b[..., i]).double()
    return s.float()


def dot_tinyblas_f32(a, b):
    """llamafile's tinyBLAS f32 (AVX2) along the last dim (a multiple of 8): one 8-lane fma accumulator, hsum."""
    a, b = torch.broadcast_tensors(a.float(), b.float())
    acc = torch.zeros(a.shape[:-1] + (8,))
    for i in range(0, a.shape[-1], 8):
        acc = fma(a[..., i:i + 8], b[..., i:i + 8], acc)
    r = acc[..., :4] + acc[..., 4:]
    return (r[..., 0] + r[..., 2]) + (r[..., 1] + r[..., 3])


def soft_max(x):
    """ggml soft_max rows (already scaled and masked, length a multiple of 8): v_expf(x - max), per-8 float sums
    added in double, then times float(1/sum)."""
    y = v_expf(x - x.amax(-1, keepdim=True))
    c = y.reshape(*y.shape[:-1], -1, 8)
    r = c[..., 4:] + c[..., :4]
    s = (r[..., 0] + r[..., 2]) + (r[..., 1] + r[..., 3])
    tot = s.double().cumsum(-1)[..., -1]
    return y * (1.0 / tot).float()[..., None]


def swiglu(g, u):
    n = g.shape[-1] & ~7
    silu = torch.cat((g[..., :n] / (1 + v_expf(0 - g[..., :n])), g[..., n:] / (1 + libm_expf(-g[..., n:]))), -1)
    return silu * u


# ---------------------------------------------------------------------------------------------------------------
# the model

class GgmlQ8Model:
    """Our Transformer (loaded from a Q8_0 GGUF by weights.load_model) run with llama.cpp's CPU arithmetic."""

    def __init__(self, model):
        a = model.args
        if a.rope_scaling:  # ggml's rope_yarn with frequency factors is not followed here
            raise NotImplementedError(f"rope scaling {a.rope_scaling} is not emulated")
        self.args, self.model = a, model
        self.emb = model.model.embed_tokens.weight.detach().float()
        self.w = {n: q8_0_blocks(m.weight) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        self.kq_scale = torch.div(f32(1.0), f32(_libm.sqrtf(float(a.head_dim))))
        self.cache = []

    def reset(self):
        self.cache = [[torch.zeros(0, self.args.n_kv_heads, self.args.head_dim)] * 2 for _ in self.model.model.layers]

    def attention(self, i, q, k, v, start):
        """q (T, H, D); k, v (T, KV, D) appended to layer i's cache; causal over every cached position."""
        a, T = self.args, q.shape[0]
        K = self.cache[i][0] = torch.cat((self.cache[i][0], k))
        V = self.cache[i][1] = torch.cat((self.cache[i][1], v))
        S = K.shape[0]
        pad = -S % 32  # ggml pads the KV view (to 256); padded keys are masked and add exact zeros
        rep = a.n_heads // a.n_kv_heads
        Kh, Vh = K.permute(1, 0, 2).repeat_interleave(rep, 0), V.permute(1, 2, 0).repeat_interleave(rep, 0)
        kq = dot_vec_f32(q.permute(1, 0, 2)[:, :, None, :], Kh[:, None, :, :]) * self.kq_scale  # (H, T, S)
        mask = torch.full((T, S + pad), float("-inf"))
        mask[:, :S] = torch.where(torch.arange(S)[None] <= start + torch.arange(T)[:, None], 0.0, float("-inf"))
        p = soft_max(torch.cat((kq, torch.zeros(*kq.shape[:2], pad)), -1) + mask)
        Vp = torch.cat((Vh, torch.zeros(*Vh.shape[:2], pad)), -1)
        dot = dot_tinyblas_f32 if T > 1 else dot_vec_f32  # llamafile's sgemm takes batches, not one row
        out = dot(p[:, :, None, :], Vp[:, None, :, :])  # (H, T, D)
        return out.permute(1, 0, 2).reshape(T, -1)

    def forward(self, ids, start=0):
        """ids (list) at positions start.. -> logits (T, vocab), appending to the cache."""
        a, w = self.args, self.w
        x = self.emb[torch.tensor(ids)]
        cos, sin = rope_tables(range(start, start + len(ids)), a.head_dim, a.rope_theta)
        for i, layer in enumerate(self.model.model.layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, layer.input_layernorm.weight.detach(), a.norm_eps)
            q, k, v = (q8_0_matmul(h, w[p + f"self_attn.{n}_proj"]).view(len(ids), -1, a.head_dim) for n in "qkv")
            att = self.attention(i, rope(q, cos, sin), rope(k, cos, sin), v, start)
            x = q8_0_matmul(att, w[p + "self_attn.o_proj"]) + x
            h = rms_norm(x, layer.post_attention_layernorm.weight.detach(), a.norm_eps)
            ff = swiglu(q8_0_matmul(h, w[p + "mlp.gate_proj"]), q8_0_matmul(h, w[p + "mlp.up_proj"]))
            x = q8_0_matmul(ff, w[p + "mlp.down_proj"]) + x
        return q8_0_matmul(rms_norm(x, self.model.model.norm.weight.detach(), a.norm_eps), w["lm_head"])

    def generate(self, prompt, n_new):
        """Greedy tokens as llama.cpp's eval loop makes them: the prompt in one batch, then one token at a time."""
        self.reset()
        logits, new = self.forward(prompt), []
        for _ in range(n_new):
            new.append(int(logits[-1].argmax()))
            logits = self.forward([new[-1]], len(prompt) + len(new) - 1)
        return new
