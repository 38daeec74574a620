"""
The dry run: train.py's step at its real size, on a laptop, before anyone rents a GPU.

    python train.py configs/pmc.py --dry_run=True                  # LLaMA-7B on 8 GPUs, as configs/pmc.py plans
    python train.py configs/pmc.py --dry_run=True --world_size=16  # two nodes
    python finetune_qa.py configs/ft_id.py --lora=True --dry_run=True

train.run_dry_run builds the model at its real shape, shards it as train.py does and runs train_step itself, under
torch's FakeTensorMode (tensors with shapes, dtypes and devices but no data) and a fake process group of world_size
ranks (collectives that move nothing), as rank 0. This module measures that step: peak memory per GPU by category
from torch's FSDPMemTracker, beside memplan.py's term for the same thing, and the FLOPs of one optimizer step from
torch's FlopCounterMode, beside the MFU formula. LLaMA-7B at world size 8 takes about a minute on 2 CPU cores and
under 0.5 GB of memory. docs/training.md says what each figure measures.
"""
import json
import os
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from memplan import GiB, OVERHEAD_GIB, memory_plan

CARDS_GIB = (40, 80)  # the A100/H100 sizes people rent


# -----------------------------------------------------------------------------
# the fake world: a fake process group, fake tensors, and what torch needs to run a step on them

def fake_world(world):
    """Rank 0 of a fake process group of `world` ranks (torch's 'fake' backend: collectives return at once; importing
    torch's fake_pg registers it, as torchtitan's memory estimation does)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    return SimpleNamespace(rank=0, world=world, device=torch.device("cpu"), master=True)


class FakeScalars(TorchDispatchMode):
    """A fake tensor has no value to read: .item() and float() (train_step's loss, token count and gradient norm)
    read 1 instead. The step's numbers are then meaningless, its shapes and memory are not."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            return True if args[0].dtype == torch.bool else 1.0 if args[0].is_floating_point() else 1
        return func(*args, **(kwargs or {}))


class OwnFakeMode:
    """DTensor's sharding propagation works out each op's output shape by running it on global-shape fake tensors,
    in the active fake mode if there is one (ours), else in a fresh one (a real run). In ours the tracker books them
    as memory: the full, unsharded size of every gradient in clip_grad_norm_ (25 GiB at 7B) and of every AdamW
    temporary. DTensor enters ShardingPropagator._fake_mode_lock (a nullcontext, a lock in threaded tests) before
    it looks for the mode: unsetting ours there gives it a fresh one, as in a real run, which the tracker skips."""

    def __init__(self):
        self.stack = []

    def __enter__(self):
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        self.stack.append(unset_fake_temporarily())
        self.stack[-1].__enter__()

    def __exit__(self, *exc):
        return self.stack.pop().__exit__(*exc)


@contextmanager
def fake_tensors():
    """Everything made inside is a fake tensor; the model's meta parameters become fake when materialized."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.tensor._sharding_prop import ShardingPropagator
    saved = ShardingPropagator._fake_mode_lock
    ShardingPropagator._fake_mode_lock = OwnFakeMode()
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), FakeScalars():
            yield
    finally:
        ShardingPropagator._fake_mode_lock = saved


# -----------------------------------------------------------------------------
# measuring: memory by category (FSDPMemTracker) and FLOPs (FlopCounterMode)

def make_tracker(model, opt):
    """torch's FSDPMemTracker, told two things about train_step: a micro-step's forward starts a new set of module
    statistics (the tracker refuses a second forward of the root otherwise), and the peak is kept per phase
    (forward and loss, backward, optimizer step), with the held state read just before the optimizer steps."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    class StepTracker(FSDPMemTracker):
        def __init__(self, *args):
            super().__init__(*args)
            self.phases = {}  # phase -> its peak snapshot {category: bytes}
            self.held = {}  # the snapshot just before the optimizer step: every gradient there, the states (step 2)

        def _fsdp_state_pre_forward(self, fsdp_mod, orig):
            inner = super()._fsdp_state_pre_forward(fsdp_mod, orig)

            def new_micro_step(*args, **kwargs):
                if fsdp_mod is self._root_mod and not self._mod_tracker.is_bw:
                    self.reset_mod_stats()
                return inner(*args, **kwargs)
            return new_micro_step

        def _fsdp_param_group_post_backward(self, fsdp_mod, orig):
            inner = super()._fsdp_param_group_post_backward(fsdp_mod, orig)

            def tag_accumulator(*args, **kwargs):  # defer_grad_sync: FSDP2 keeps fp32 copies of the unsharded
                inner(*args, **kwargs)  # gradients between micro-steps, made in backward, so booked as temporaries
                group = fsdp_mod._get_fsdp_state()._fsdp_param_group
                for p in group.fsdp_params if group else ():
                    if p.unsharded_accumulated_grad is not None:
                        self._update_and_maybe_create_winfos(p.unsharded_accumulated_grad, self._ref_class.UNSHARDED_GRAD)
            return tag_accumulator

        def _update_peak_stats(self, peak_state):
            super()._update_peak_stats(peak_state)
            snap = next(iter(self._curr_mem_snap.values()), None)
            phase = "optimizer" if self._in_opt else "backward" if self._mod_tracker.is_bw else "forward"
            if snap is not None and snap["Total"] > self.phases.get(phase, {}).get("Total", -1):
                self.phases[phase] = dict(snap)

    return StepTracker(model, opt)


def flop_counter():
    """torch's FlopCounterMode, taught the CPU flash-attention kernel (the fake device is the CPU) with torch's own
    formulas for the CUDA flash kernel: 4 x batch x heads x T x S x head_dim forward, twice that backward."""
    from torch.utils import flop_counter as fc
    aten = torch.ops.aten  # the CPU kernels take (query, key, value, ...) and (grad_out, query, key, value, ...)
    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, **__: fc.sdpa_backward_flop_count(g, q, k, v)})


def measure(step, model, opt, steps=2):
    """Run step() `steps` times under the memory tracker (the first makes AdamW's states, so the peak is from a
    step that has them), then once more under the FLOP counter. -> {phases, held, peak, flops}."""
    tracker = make_tracker(model, opt)
    hook = opt.register_step_pre_hook(lambda *_: tracker.held.update(next(iter(tracker._curr_mem_snap.values()))))
    with tracker:
        for _ in range(steps):
            step()
    hook.remove()
    with flop_counter() as counter:
        step()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    name = lambda k: k.name.lower() if hasattr(k, "name") else k.lower()  # noqa: E731
    as_dict = lambda s: {name(k): int(v) for k, v in s.items()}  # noqa: E731
    return {"peak": as_dict(peak), "held": as_dict(tracker.held),
            "phases": {p: as_dict(s) for p, s in tracker.phases.items()}, "flops": int(counter.get_total_flops())}


# -----------------------------------------------------------------------------
# the report: measured beside planned, the verdict per card, a JSON file

def planned(args, c, world, trainable=None, trainable_tensors=None):
    """memplan.py's terms for this config, grouped as the tracker's categories are: -> (groups, peak bytes)."""
    terms, peak = memory_plan(args, world, c.micro_batch_size, c.block_size, c.grad_accum,
                              c.activation_checkpointing, c.defer_grad_sync, trainable, trainable_tensors)
    b = [bytes_ for _, bytes_, _ in terms]  # in memory_plan's order (see there)
    groups = {"sharded_params": b[0], "optimizer": b[1], "grad_accumulator": b[2], "sharded_grads": b[3],
              "gathered_params": b[4], "forward_activations": b[5] + b[6],
              "backward_activations": max(b[5] + b[7] + b[8], b[9])}  # in a block, or the root's reduce-scatter
    return groups, peak


def measured_groups(m):
    """The tracker's categories, grouped as planned(): the held state read before the optimizer step, the rest at
    the forward (loss included) and backward peaks: there, all that is neither state nor gathered parameters."""
    fw, bw, held = m["phases"].get("forward", {}), m["phases"].get("backward", {}), m["held"]
    accumulator = fw.get("unsharded_grad", 0)  # in backward, unsharded gradients are also the root's, in flight
    gathered = lambda s: s.get("unsharded_param", 0) + s.get("all_gather", 0)  # noqa: E731
    rest = lambda s: s.get("total", 0) - gathered(s) - sum(  # noqa: E731
        s.get(k, 0) for k in ("sharded_param", "opt", "sharded_grad")) - min(s.get("unsharded_grad", 0), accumulator)
    return {"sharded_params": held.get("sharded_param", 0), "optimizer": held.get("opt", 0),
            "grad_accumulator": accumulator, "sharded_grads": held.get("sharded_grad", 0),
            "gathered_params": max(gathered(fw), gathered(bw)),
            "forward_activations": rest(fw), "backward_activations": rest(bw)}


ROWS = [("sharded_params", "fp32 master weights, sharded (4 B/param / world)", "sharded_param"),
        ("optimizer", "AdamW exp_avg + exp_avg_sq, sharded (8 B/param / world) + steps", "opt"),
        ("sharded_grads", "fp32 gradients, sharded (4 B/param / world)", "sharded_grad"),
        ("grad_accumulator", "fp32 unsharded gradient accumulator (defer_grad_sync)", "unsharded_grad"),
        ("gathered_params", "bf16 parameters gathered: root + blocks in flight", "unsharded_param + all_gather"),
        ("forward_activations", "forward peak: checkpoints/activations + the loss's buffers", "the rest"),
        ("backward_activations", "backward peak: a block's backward, or the root's reduce-scatter", "the rest")]


def verdict(peak_bytes, overhead_gib=OVERHEAD_GIB):
    """One line: whether peak + the CUDA allowance fits each card size in CARDS_GIB."""
    need = peak_bytes / GiB + overhead_gib
    return " | ".join(f"fits on {'an' if card == 80 else 'a'} {card} GB card: yes, {card - need:.1f} GiB headroom" if need <= card else
                      f"does not fit on {'an' if card == 80 else 'a'} {card} GB card: needs {need:.1f} GiB per GPU" for card in CARDS_GIB)


def recompute_flops_per_token(args, seq):
    """What activation checkpointing adds per token: each block's forward again, but for down_proj, whose output
    nothing saves (torch's non-reentrant checkpoint stops recomputing once every saved tensor is back)."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    matmuls = args.dim * (2 * q + 2 * kv) + 2 * args.dim * args.intermediate_size
    return args.n_layers * (2 * matmuls + 4 * args.n_heads * args.head_dim * seq)


def report(m, plan, c, world, model_flops, recompute_flops, out_path):
    """Print the measured-beside-planned table, the FLOPs and the verdict; write the JSON; -> the dict written."""
    groups, plan_peak = plan
    meas = measured_groups(m)
    print(f"\nper GPU ({world} ranks, micro-batch {c.micro_batch_size} x {c.block_size}, grad_accum {c.grad_accum}, "
          f"activation checkpointing {c.activation_checkpointing}, defer_grad_sync {c.defer_grad_sync}), GiB:")
    print(f"{'':78s} {'planned':>9s} {'measured':>9s}  tracker category")
    for key, what, cat in ROWS:
        print(f"{what:78s} {groups[key] / GiB:9.3f} {meas[key] / GiB:9.3f}  {cat}")
    print(f"{'peak allocated':78s} {plan_peak / GiB:9.3f} {m['peak']['total'] / GiB:9.3f}  total")
    expected = model_flops + recompute_flops
    print(f"\nFLOPs of one optimizer step on this rank: {m['flops'] / 1e12:,.2f} TFLOP counted; "
          f"{model_flops / 1e12:,.2f} model (flops_per_token x tokens) + {recompute_flops / 1e12:,.2f} recomputed = "
          f"{expected / 1e12:,.2f} ({m['flops'] / expected - 1:+.2%})")
    line = verdict(m["peak"]["total"])
    print(f"measured, with {OVERHEAD_GIB:g} GiB for the CUDA context and workspaces: {line}")
    result = {"world_size": world, "micro_batch_size": c.micro_batch_size, "block_size": c.block_size,
              "grad_accum": c.grad_accum, "activation_checkpointing": c.activation_checkpointing,
              "defer_grad_sync": c.defer_grad_sync, "overhead_gib": OVERHEAD_GIB,
              "planned": {**groups, "peak": plan_peak}, "measured": {**meas, "peak": m["peak"]["total"]},
              "tracker": m, "flops": {"counted": m["flops"], "model": model_flops, "recompute": recompute_flops},
              "verdict": line}
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(out_path + ".tmp", out_path)
    print(f"written {out_path}")
    return result
