"""The optimizer step of train.fit, against values computed here: the learning-rate schedule's closed form, the
gradient of the global batch's mean loss (a plain model and F.cross_entropy), clipping by the total norm, and AdamW
written out by hand, with weight decay on matrices only."""
import json
import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import train
from model import ModelArgs, Transformer

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = ModelArgs(dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=64, intermediate_size=32, max_seq_len=16)


def settings(out_dir, **kw):
    return SimpleNamespace(**{
        "learning_rate": 0.05, "min_lr": 0.005, "warmup_iters": 1, "lr_decay_iters": 0, "max_iters": 3, "epochs": 1.0,
        "weight_decay": 0.5, "beta1": 0.8, "beta2": 0.9, "grad_clip": 0.0, "init_from": "scratch",
        "out_dir": str(out_dir), "log_interval": 1, "eval_interval": 0, "ckpt_interval": 0, "keep_checkpoints": 1,
        "block_size": 16, "seed": 3, "tokenizer": "", "dtype": "float32", "compile": False,
        "activation_checkpointing": False, "micro_batch_size": 2, "global_batch_size": 4, "grad_accum": 2,
        "defer_grad_sync": False, **kw})


# --- the schedule -------------------------------------------------------------------------------------------------

def test_get_lr_closed_form():
    c = SimpleNamespace(learning_rate=1.0, min_lr=0.1, warmup_iters=4, lr_decay_iters=0)
    cosine = lambda frac: 0.1 + 0.9 * (1 + math.cos(math.pi * frac)) / 2  # noqa: E731
    expect = {0: 0.2, 1: 0.4, 3: 0.8,  # linear warmup: lr * (it + 1) / (warmup + 1)
              4: 1.0, 29: cosine(0.25), 54: 0.55, 79: cosine(0.75), 103: cosine(99 / 100), 104: 0.1, 150: 0.1}
    for it, lr in expect.items():
        assert abs(train.get_lr(it, 104, c) - lr) <= 1e-12, (it, train.get_lr(it, 104, c), lr)
    assert abs(cosine(0.25) - 0.8681980515339464) <= 1e-12
    c.lr_decay_iters = 54  # the schedule ends at 54 whatever the run's length
    for it, lr in {4: 1.0, 29: 0.55, 54: 0.1, 80: 0.1}.items():
        assert abs(train.get_lr(it, 104, c) - lr) <= 1e-12, it
    c.warmup_iters = 0
    assert train.get_lr(0, 10, c) == 1.0 and abs(train.get_lr(27, 54, c) - 0.55) <= 1e-12


# --- one optimizer step, recorded ---------------------------------------------------------------------------------

class FixedBatches:
    """Three steps of two micro-batches each; the micro-batches carry different numbers of target tokens, so the
    mean over the global batch differs from the mean of the micro-batch means."""
    steps_per_epoch = 3

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.steps = []
        for _ in range(3):
            step = []
            for masked in (0, 11):
                x = torch.randint(0, ARGS.vocab_size, (2, 16), generator=g)
                y = torch.randint(0, ARGS.vocab_size, (2, 16), generator=g)
                y[0, :masked] = -100
                step.append((x, y))
            self.steps.append(step)

    def micro_batches(self, epoch, step):
        return iter(self.steps[step])


@pytest.fixture(scope="module")
def ctx():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}  # fit() installs its own
    ctx = train.setup_distributed("cpu")
    yield ctx
    dist.destroy_process_group()
    for s, h in handlers.items():
        signal.signal(s, h)


def full(t):
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def run_fit(ctx, c, monkeypatch):
    """fit() on FixedBatches with AdamW recording, at each step, its parameter groups and every parameter and
    gradient it is handed; returns (records, final parameters by name, data)."""
    records = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            records.append([{"lr": g["lr"], "weight_decay": g["weight_decay"], "betas": g["betas"], "eps": g["eps"],
                             "params": [(id(p), full(p), full(p.grad)) for p in g["params"]]}
                            for g in self.param_groups])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    model = train.build_model(c, ctx.device, model_args=ARGS)
    names = {id(p): n for n, p in model.named_parameters()}
    data = FixedBatches()
    train.fit(model, data, c, ctx, ARGS)
    by_name = [[{**g, "params": {names[i]: (p, gr) for i, p, gr in g["params"]}} for g in rec] for rec in records]
    return by_name, {n: full(p) for n, p in model.named_parameters()}, data


def reference_grads(params, batches, grad_clip):
    """The gradient of sum(loss) / (target tokens of the whole step) for a plain model, clipped by total norm."""
    m = Transformer(ARGS)
    m.load_state_dict(params, strict=False)
    m.init_rope()
    n_tok = sum(int((y != -100).sum()) for _, y in batches)
    loss = sum(torch.nn.functional.cross_entropy(m(x)[0].reshape(-1, ARGS.vocab_size), y.reshape(-1),
                                                 ignore_index=-100, reduction="sum") for x, y in batches) / n_tok
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
    coef = min(1.0, grad_clip / (norm + 1e-6)) if grad_clip > 0 else 1.0
    return {n: g * coef for n, g in grads.items()}, norm, loss.item()


def adamw_by_hand(p, grads, lrs, wd, beta1, beta2, eps=1e-8):
    m, v = torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
    p = p.double()
    for t, (g, lr) in enumerate(zip(grads, lrs), 1):
        g = g.double()
        p = p * (1 - lr * wd)  # decoupled weight decay
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
    return p


@pytest.mark.parametrize("grad_clip,defer", [(0.0, False), (0.05, False), (1e3, False), (0.05, True)])
def test_fit_step_is_clipped_adamw_with_decay_on_matrices(ctx, tmp_path, monkeypatch, grad_clip, defer):
    """grad_clip: off; below the gradient norm (clips); far above it. defer: the gradient sync deferred to the last
    micro-step (defer_grad_sync) gives the same step."""
    c = settings(tmp_path, grad_clip=grad_clip, defer_grad_sync=defer)
    records, final, data = run_fit(ctx, c, monkeypatch)
    assert len(records) == 3
    lrs = [0.025, 0.05, 0.005 + 0.045 * (1 + math.cos(math.pi / 2)) / 2]  # warmup 1, cosine over 3 steps
    log = [json.loads(l) for l in open(os.path.join(tmp_path, "log.jsonl"))]
    assert [r["lr"] for r in log] == pytest.approx(lrs, abs=1e-12)
    for step, rec in enumerate(records):
        groups = {n: g for g in rec for n in g["params"]}
        assert [g["lr"] for g in rec] == pytest.approx([lrs[step]] * len(rec), abs=1e-12)
        assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-8 for g in rec)
        # weight decay: every matrix, no vector (the RMSNorm weights)
        assert {n: g["weight_decay"] for n, g in groups.items()} == \
            {n: 0.5 if p.dim() >= 2 else 0.0 for n, p in final.items()}
        params = {n: g["params"][n][0] for n, g in groups.items()}
        ref, norm, loss = reference_grads(params, data.steps[step], grad_clip)
        assert abs(log[step]["loss"] - loss) <= 1e-5 and abs(log[step]["grad_norm"] - norm) <= 1e-4 * norm
        if grad_clip == 0.05:
            assert norm > 2 * grad_clip  # this run clips every step: the gradients handed to AdamW have norm 0.05
            got = math.sqrt(sum(float(g["params"][n][1].double().pow(2).sum()) for n, g in groups.items()))
            assert abs(got - grad_clip) <= 1e-4 * grad_clip
        for n, g in groups.items():
            got = g["params"][n][1]
            assert (got - ref[n]).abs().max().item() <= 1e-5 * max(ref[n].abs().max().item(), 1e-3), (step, n)
    first = {n: g["params"][n][0] for g in records[0] for n in g["params"]}
    for n, p0 in first.items():
        grads = [next(g["params"][n][1] for g in rec if n in g["params"]) for rec in records]
        expect = adamw_by_hand(p0, grads, lrs, 0.5 if p0.dim() >= 2 else 0.0, 0.8, 0.9)
        assert (final[n].double() - expect).abs().max().item() <= 1e-6, n
        if p0.dim() == 1:  # the test can tell: decay would have pulled the norms (all 1) towards 0 by ~4%
            assert (adamw_by_hand(p0, grads, lrs, 0.5, 0.8, 0.9) - expect).abs().max().item() > 1e-2


# --- gradient accumulation: sharded gradients between micro-steps -------------------------------------------------

@pytest.mark.parametrize("defer", [False, True])
def test_gradients_between_micro_steps_are_sharded_unless_deferred(ctx, tmp_path, defer):
    """bf16 FSDP2 (fp32 reduction): by default each micro-step's gradients are reduce-scattered at once, so from the
    second micro-step on every sharded parameter holds its fp32 gradient shard; with defer_grad_sync none does before
    the last micro-step (FSDP2 holds them unsharded instead: the memory plan's 4 B/param accumulator)."""
    c = settings(tmp_path, dtype="bfloat16", defer_grad_sync=defer)
    model = train.build_model(c, ctx.device, model_args=ARGS)
    shards = list(model.parameters())
    seen = []  # at the start of each micro-step's forward: which shards hold a gradient, and of what

    def look(module, args):
        seen.append([(p.grad is not None, p.grad.dtype if p.grad is not None else None,
                      tuple(p.grad.to_local().shape) == tuple(p.to_local().shape) if p.grad is not None else None)
                     for p in shards])
    model.register_forward_pre_hook(look, prepend=True)
    opt = train.make_optimizer(model, c)
    loss, norm, _ = train.train_step(model, opt, FixedBatches().steps[0], c, ctx)
    assert len(seen) == 2 and math.isfinite(loss) and norm > 0
    assert seen[0] == [(False, None, None)] * len(shards)  # a fresh step starts with no gradient
    assert seen[1] == ([(False, None, None)] * len(shards) if defer else [(True, torch.float32, True)] * len(shards))
    assert all(p.grad is None for p in shards)  # zeroed (set to None) after the optimizer step
