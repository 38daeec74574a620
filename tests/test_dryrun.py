"""The dry run (train.py --dry_run=True, dryrun.py): train_step at a config's shape and world size on fake tensors.
Parameter, gradient and AdamW bytes against their closed forms worked out here from the shapes, the peak against
memplan.py's, the FLOP count against the formula, a config that fits no card refused in one line, and train.py's
real path unchanged (losses of the code before the dry run existed, to the bit)."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import finetune_qa
import train
from model import ModelArgs

V, D, L, H, KV, I = 32000, 256, 2, 4, 2, 512  # every dim 0 divides by the world sizes: no FSDP padding
SMALL = ["--init_from=scratch", "--data_dir=/nonexistent", f"--dim={D}", f"--n_layers={L}", f"--n_heads={H}",
         f"--n_kv_heads={KV}", f"--intermediate_size={I}", "--block_size=128", "--micro_batch_size=2",
         "--global_batch_size=16", "--dtype=bfloat16", "--activation_checkpointing=True", "--dry_run=True"]


def n_params():
    hd = D // H
    block = D * (H * hd) * 2 + D * (KV * hd) * 2 + 3 * D * I + 2 * D  # q, o; k, v; gate, up, down; two norms
    return 2 * V * D + L * block + D  # embeddings, head, blocks, final norm


def dry(tmp_path, *extra):
    return train.main(SMALL + [f"--out_dir={tmp_path}", *extra])


@pytest.mark.parametrize("world,defer", [(1, False), (4, False), (4, True)])
def test_sharded_state_equals_closed_form(tmp_path, capsys, world, defer):
    r = dry(tmp_path, f"--world_size={world}", f"--defer_grad_sync={defer}")
    n, meas = n_params(), r["measured"]
    assert meas["sharded_params"] == 4 * n // world  # fp32 master weights, this rank's shard
    assert meas["optimizer"] == 8 * n // world + 4 * (3 + 9 * L)  # exp_avg, exp_avg_sq; a fp32 step per tensor
    assert meas["sharded_grads"] == 4 * n // world
    grad_accum = 16 // (2 * world)
    assert meas["grad_accumulator"] == (4 * n if defer and grad_accum > 1 else 0)  # unsharded fp32, deferred sync
    assert abs(meas["peak"] / r["planned"]["peak"] - 1) < 0.10
    tokens = 2 * 128 * grad_accum  # this rank's step: model FLOPs by the formula, recomputation closed form
    hd = D // H
    model = 6 * (n - V * D) + 12 * L * H * hd * 128
    recompute = L * (2 * (D * (2 * H * hd + 2 * KV * hd) + 2 * D * I) + 4 * H * hd * 128)
    assert abs(r["flops"]["counted"] / ((model + recompute) * tokens) - 1) < 0.02
    assert r["flops"]["model"] == model * tokens
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("dry run of scratch") and "planned (memplan.py" in out.splitlines()[0]
    assert json.load(open(tmp_path / "dry_run.json"))["measured"] == meas


def test_checkpointing_saves_activation_memory(tmp_path):
    """On real tensors checkpointing saves memory; the tracker must see that too (on fake tensors it books each
    block's intermediates only while they live)."""
    from memplan import saved_bytes_per_token
    on = dry(tmp_path, "--world_size=2", "--block_size=256")
    off = dry(tmp_path, "--world_size=2", "--block_size=256", "--activation_checkpointing=False")
    args = ModelArgs(dim=D, n_layers=L, n_heads=H, n_kv_heads=KV, intermediate_size=I, vocab_size=V)
    saved = L * (saved_bytes_per_token(args) - 2 * D) * 2 * 256  # what each block keeps beyond its bf16 input
    gap = off["measured"]["forward_activations"] - on["measured"]["forward_activations"]
    assert 0.9 * saved < gap < 1.1 * saved
    assert off["flops"]["recompute"] == 0 and on["flops"]["counted"] > off["flops"]["counted"]


def test_lora_dry_run_books_adapter_state_only(tmp_path):
    r = finetune_qa.main(SMALL + [f"--out_dir={tmp_path}", "--world_size=2", "--lora=True", "--lora_r=8"])
    hd = D // H
    lora = L * 8 * ((D + H * hd) + (D + KV * hd))  # q_proj and v_proj: A (r x in) + B (out x r)
    assert r["measured"]["optimizer"] == 8 * lora // 2 + 4 * 4 * L and r["measured"]["sharded_grads"] == 4 * lora // 2
    assert r["measured"]["sharded_params"] == 4 * (n_params() + lora) // 2


def test_config_that_fits_no_card_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["configs/pmc.py", "--dry_run=True", "--world_size=1", "--micro_batch_size=128"])
    msg = str(e.value)
    assert "\n" not in msg and "does not fit on a 40 GB card: needs" in msg and "does not fit on an 80 GB card" in msg
    assert capsys.readouterr().out == ""  # nothing measured, nothing else said


def test_unknown_shape_names_the_presets():
    with pytest.raises(SystemExit, match="model_preset=NAME .*llama-7b"):
        train.main(["configs/pmc.py", "--dry_run=True", "--model_preset="])


def test_real_step_unchanged():
    """train_step on real tensors gives, to the bit, the losses and gradient norms of the code before the dry run
    (recorded from commit 611f600: 3 steps of 2 micro-batches, fp32, with and without activation checkpointing)."""
    golden = [("0x1.6363a90000000p+2", "0x1.2303b60000000p+0"), ("0x1.649e300000000p+2", "0x1.6d480c0000000p+0"),
              ("0x1.655a250000000p+2", "0x1.c8d95a0000000p+0")]
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, intermediate_size=160,
                     max_seq_len=32)
    ctx = train.setup_distributed("cpu")
    try:
        for ac in (False, True):
            c = SimpleNamespace(dtype="float32", compile=False, activation_checkpointing=ac, seed=3, grad_clip=1.0,
                                defer_grad_sync=False, learning_rate=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95)
            model = train.build_model(c, ctx.device, model_args=args)
            opt = train.make_optimizer(model, c)
            g = torch.Generator().manual_seed(0)
            for want in golden:
                batches = [(torch.randint(0, 256, (2, 32), generator=g), torch.randint(0, 256, (2, 32), generator=g))
                           for _ in range(2)]
                loss, norm, _ = train.train_step(model, opt, batches, c, ctx)
                assert (float(loss).hex(), float(norm).hex()) == want and math.isfinite(loss)
    finally:
        dist.destroy_process_group()


def test_verdict_line_per_card():
    """LLaMA-7B with a deferred gradient sync plans 37.9 GiB (+3 GiB allowance): not a 40 GB card, an 80 GB one."""
    from dryrun import verdict
    from memplan import GiB, memory_plan
    from model import preset
    peak = memory_plan(preset("llama-7b"), 8, 4, 512, 4, defer_grad_sync=True)[1]
    line = verdict(peak)
    need = peak / GiB + 3
    assert line == (f"does not fit on a 40 GB card: needs {need:.1f} GiB per GPU | fits on an 80 GB card: yes, "
                    f"{80 - need:.1f} GiB headroom")
    assert verdict(10 * GiB).startswith("fits on a 40 GB card: yes, 27.0 GiB headroom")
