"""
The GPU acceptance script's plumbing and the LLaMA-7B memory plan, on CPU: `bash .ci/gpu --dry-run` runs every stage
at tiny shapes and exits non-zero when a test fails; the plan's terms match hand calculations and autograd's own
count of what a block saves.
"""
import ast
import os
import subprocess
import sys

import torch

from conftest import ROOT


def run_script(*args, timeout=300, **env):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(["bash", ".ci/gpu", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def gpu_test_names():
    tree = ast.parse(open(os.path.join(ROOT, "tests", "test_gpu.py")).read())
    return [f.name for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]


def test_dry_run_runs_every_stage_and_says_no_gpu(tmp_path):
    r = run_script("--dry-run", GPU_OUT=str(tmp_path))
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
    table = r.stdout[r.stdout.index("\ncheck "):]
    assert "NO GPU PRESENT" in r.stdout and "the GPU figures are not measured" in r.stdout
    for stage in ("tests", "fsdp", "model", "memplan"):
        assert any(line.startswith(f"stage {stage} ") and line.endswith(" ok") for line in table.splitlines()), stage
    for name in gpu_test_names():  # every gpu test collected, and skipped with the reason
        assert any(name in line and "no CUDA device" in line and line.endswith("skipped")
                   for line in table.splitlines()), name
    assert "model float32 training step tokens/s" in table and "memplan LLaMA-7B" in table
    assert {"tests.xml", "fsdp.json", "model.json", "memplan.json"} <= set(os.listdir(tmp_path))
    assert table.rstrip().endswith("all stages passed (dry run: the GPU figures are not measured)")


def test_a_failing_gpu_test_fails_the_script(tmp_path):
    failing = tmp_path / "test_failing.py"
    failing.write_text("import pytest\n\n\n@pytest.mark.gpu\ndef test_broken():\n    assert 1 == 2\n")
    r = run_script(GPU_OUT=str(tmp_path / "out"), GPU_STAGES="tests", GPU_TESTS=str(failing))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "test_broken" in r.stdout and "FAIL" in r.stdout and r.stdout.rstrip().endswith("FAILED")


# --- the memory plan ------------------------------------------------------------------------------------

def test_memory_plan_of_configs_pmc_by_hand():
    """configs/pmc.py (LLaMA-7B, 8 GPUs, micro-batch 4 x 512, grad_accum 4) in both gradient-sync modes, term by
    term from the shapes, and its peak as their sum worked out here."""
    from memplan import GiB, largest_micro_batch, memory_plan, param_counts
    from model import Transformer, preset
    args = preset("llama-7b")
    n, block, root = param_counts(args)
    assert n == 6_738_415_616 and block == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096 and root == 2 * 32000 * 4096 + 4096
    for name in ("llama2-70b", "llama3.2-1b"):  # grouped-query attention, tied embeddings
        with torch.device("meta"):
            assert param_counts(preset(name))[0] == Transformer(preset(name)).num_params()
    tokens, d, i, V = 4 * 512, 4096, 11008, 32000
    gathered, checkpoints = 2 * root + 4 * block, 32 * 2 * d * tokens  # the root + 2 blocks in bf16; block inputs
    loss = 10 * V * d + 8 * (2**25 // V) * V + 10 * d * tokens  # the head's fp32 gradient etc., 1,048-row logit chunks
    backward = 187_528 * tokens + (4 * d + 6 * i) * tokens + 6 * block  # recomputed block, gradients in flight
    for defer in (False, True):
        terms, peak = memory_plan(args, world=8, micro=4, seq=512, grad_accum=4, defer_grad_sync=defer)
        t = {what.split(":")[0].split(",")[0]: (b, when) for what, b, when in terms}
        assert t["fp32 master weights"] == (3_369_207_808, "always")  # 4 bytes x 6,738,415,616 / 8
        assert t["AdamW exp_avg + exp_avg_sq"] == (6_738_415_616 + 4 * 291, "always")  # 8 B / 8 GPUs; 291 steps
        assert t["activation checkpoints"] == (checkpoints, "always")  # each block's bf16 input, 2,048 tokens
        # reduce-scatter every micro-step: the fp32 shards accumulate, 4 B/param / 8, held from the first micro-step;
        # deferred: FSDP2 holds every parameter's unsharded fp32 gradient between micro-steps, the shards only in
        # the last backward
        assert t["fp32 gradient accumulator"] == ((26_953_662_464 if defer else 0), "always")
        # deferred: the last backward turns the accumulator into shards block by block, never both whole
        assert t["fp32 gradients"] == (3_369_207_808, "optimizer" if defer else "always")
        held = 12 * n / 8 + 4 * 291 + (4 * n if defer else 4 * n / 8)  # weights, AdamW, accumulator or shards
        assert t["the root's gradients at its reduce-scatter"] == (6 * root, "root")  # bf16 + fp32, 1.46 GiB
        assert peak == held + gathered + checkpoints + max(loss, backward)  # above the root's moment (14.0 GiB)
    # Llama-3-8B: the 128k head and embeddings' gradients at the root's reduce-scatter set the backward's peak
    l3 = preset("llama3-8b")
    n3, _, root3 = param_counts(l3)
    bw3 = 12 * n3 / 8 + 4 * 291 + 4 * n3 / 8 + 6 * root3  # the state (weights, AdamW, shards) + 6 B x 1.05B params
    terms, peak = memory_plan(l3, 8, 4, 512, 4)
    loss_phase = sum(b for _, b, w in terms if w in ("always", "loss"))
    assert peak == max(loss_phase, bw3) and 20.8 < bw3 / GiB < 20.9  # the dry run measured 20.84 GiB there
    assert 15.8 < memory_plan(args, 8, 4, 512, 4)[1] / GiB < 16.0  # configs/pmc.py as shipped: fits a 40 GB card
    assert 37.8 < memory_plan(args, 8, 4, 512, 4, defer_grad_sync=True)[1] / GiB < 38.0  # deferred: 40 GB does not
    for defer in (False, True):  # one micro-step: the modes are the same
        assert memory_plan(args, 8, 16, 512, 1, defer_grad_sync=defer)[1] / GiB < 21
    assert largest_micro_batch(args, 8, 512, 2, 40, defer_grad_sync=True) == 0
    assert largest_micro_batch(args, 8, 512, 2, 40) == largest_micro_batch(args, 8, 512, 1, 40) >= 16


def test_saved_bytes_per_token_is_what_autograd_saves():
    """The plan's per-token activation bytes against saved_tensors_hooks on a bf16 block (MHA and GQA), counting
    each saved storage once and no parameter."""
    from memplan import saved_bytes_per_token
    from model import Block, ModelArgs, rope_tables
    for kv in (4, 2):
        args = ModelArgs(dim=256, n_layers=1, n_heads=4, n_kv_heads=kv, intermediate_size=1000, max_seq_len=128)
        block = Block(args).to(torch.bfloat16)
        cos, sin = rope_tables(args)
        params = {p.untyped_storage().data_ptr() for p in block.parameters()}
        saved = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        T = 64
        x = torch.randn(1, T, args.dim, dtype=torch.bfloat16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x, cos[:T], sin[:T])
        assert sum(saved.values()) == T * saved_bytes_per_token(args), kv
