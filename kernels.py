"""
Fast paths that change how the model computes, never what: each is one function with its own parity test.

    linear_cross_entropy(h, lm_head, targets)   the training loss without the (tokens x vocabulary) logits

The model reaches it through `Transformer.forward(..., loss_fn=linear_cross_entropy)`, so model.py stays the
architecture alone. A fast path earns its place here only if it is at least as fast as plain PyTorch on every CPU and
GPU we can measure (AMD and Intel x86 alike) or decides by measurement at run time; vendor-tuned routes did not
travel (on Intel, oneDNN for one-token linears made eager decoding 10% slower than plain nn.Linear), so none remain.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def linear_cross_entropy(h, lm_head, targets):
    """sum of cross_entropy(lm_head(h), targets) over targets != -100; h (N, dim), targets (N,).

    A plain nn.Linear head goes through LinearCrossEntropy (chunked, no full logits); any other head (a LoRA-wrapped
    one, say) is applied as it is."""
    if type(lm_head) is not nn.Linear or lm_head.bias is not None:
        return F.cross_entropy(lm_head(h).float(), targets, ignore_index=-100, reduction="sum")
    return LinearCrossEntropy.apply(h, lm_head.weight, targets)


class LinearCrossEntropy(torch.autograd.Function):
    """sum over targets != -100 of cross_entropy(h @ W^T, targets), a chunk of rows at a time.

    The logits of one chunk exist at once (fp32, ~128 MB for 32k vocab), and their gradient (softmax - one-hot) is
    turned into the gradients of h and W in the same pass, so backward has nothing to recompute and the (N, V)
    logits and their gradient are never materialised. W's gradient is skipped when W is frozen (LoRA).
    """

    chunk_elems = 2**25  # logits elements per chunk

    @staticmethod
    def forward(ctx, h, weight, targets):
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
        # one fp32 buffer for every chunk's logits, then softmax and gradient, all in place
        buf = torch.empty(min(chunk, N), V, dtype=torch.float32, device=h.device)
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
        return *(g.mul_(grad_out) if g is not None else None for g in grads), None
