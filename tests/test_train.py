import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import prepare_corpus as pc
from corpus_data import load_split
from conftest import GLOO_TEARDOWN_ABORT, ROOT, data_path, run_fresh_multiprocess, torchrun, wait_for

TINY = ["--init_from=scratch", "--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--intermediate_size=64",
        "--block_size=64", "--micro_batch_size=2", "--global_batch_size=8", "--dtype=float32", "--learning_rate=3e-3",
        "--warmup_iters=1", "--eval_interval=0", "--log_interval=1", "--device=cpu", "--export_dtype=float32"]
ENV = {**os.environ, "PYTHONPATH": ROOT}
ENV_DIST = {**ENV, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    pc.main(["--source", "pubtator", "--input", data_path("biomed_corpus", "bc5cdr", "CDR_DevelopmentSet.PubTator.txt"),
             "--tokenizer", data_path("tokenizer", "llama_tokenizer.model"), "--out_dir", str(out),
             "--val_fraction", "0.05", "--workers", "1", "--quiet"])
    return str(out)


def train(out_dir, corpus, *extra, nproc=1, check=True):
    args = [f"--out_dir={out_dir}", f"--data_dir={corpus}", *TINY, *extra]
    if nproc == 1:
        r = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=180)
    else:  # multi-process runs here start from scratch in a fresh out_dir
        r = run_fresh_multiprocess(torchrun(nproc, "train.py", *args), out_dir, cwd=ROOT, env=ENV_DIST,
                                   capture_output=True, text=True, timeout=180)
    if check and r.returncode != 0:
        raise AssertionError(r.stdout[-3000:] + r.stderr[-5000:])
    return r


def losses(out_dir):
    return {r["iter"]: r["loss"] for r in map(json.loads, open(os.path.join(out_dir, "log.jsonl"))) if "loss" in r}


def final_weights(out_dir):
    from safetensors.torch import load_file
    return load_file(os.path.join(out_dir, "hf", "model.safetensors"))


def resume_from(ckpt, out_dir):
    """A fresh out_dir holding only ckpt: what a restarted job finds on the shared storage."""
    os.makedirs(out_dir)
    shutil.copytree(ckpt, os.path.join(out_dir, os.path.basename(ckpt)))
    return out_dir


def resume_multiprocess(ckpt, out_dir, corpus, *extra, nproc=2):
    """nproc processes resume from ckpt alone in a fresh out_dir; like conftest.run_fresh_multiprocess, the run is
    set up afresh and repeated, once, when a worker died of PyTorch's gloo teardown abort after its work."""
    cmd = torchrun(nproc, "train.py", f"--out_dir={out_dir}", f"--data_dir={corpus}", *TINY, "--init_from=resume",
                   *extra)
    for attempt in (1, 2):
        shutil.rmtree(out_dir, ignore_errors=True)
        resume_from(ckpt, out_dir)
        r = subprocess.run(cmd, cwd=ROOT, env=ENV_DIST, capture_output=True, text=True, timeout=180)
        if r.returncode == 0 or GLOO_TEARDOWN_ABORT not in r.stderr:
            break
    if r.returncode != 0:
        raise AssertionError(r.stdout[-3000:] + r.stderr[-5000:])
    return out_dir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus):
    """1 process, grad_accum 4, 4 optimizer steps: what 2 processes must reproduce in either gradient-sync mode."""
    out = tmp_path_factory.mktemp("one") / "run"
    train(out, corpus, "--max_iters=4")
    return out


@pytest.mark.parametrize("defer", [False, True])
def test_two_processes_match_one_and_resume_exactly(tmp_path, corpus, one_process, defer):
    """2 processes at grad_accum 2 against 1 at grad_accum 4, gradients reduce-scattered after every micro-step (the
    default) or only after the last (defer_grad_sync), over 4 optimizer steps: the same global batches, so the same
    losses and weights up to fp32 summation order. Each step's gradient sums the same micro-batch gradients in
    another order (~1e-7 relative: the losses differ by 2.4e-7, held to 1e-5). AdamW's update lr x m / sqrt(v)
    turns the rounding of a gradient element that nearly cancels into a fraction of one step (lr 3e-3): measured
    7.7e-6 at most on the weights (Intel Xeon), held to 5e-5 for other CPUs' summation orders, a sixtieth of one
    step. Resumed from its step-2 checkpoint on 2 processes, the run repeats steps 3-4 bit for bit."""
    mode = f"--defer_grad_sync={defer}"
    two = tmp_path / "two"
    train(two, corpus, "--max_iters=4", "--ckpt_interval=2", mode, nproc=2)
    one, got = losses(one_process), losses(two)
    assert json.load(open(two / "train_config.json"))["defer_grad_sync"] is defer
    assert "ckpt-00000004" in os.listdir(one_process)  # a run ends with a checkpoint
    assert sorted(one) == [1, 2, 3, 4] and one[4] < one[1]
    for i in one:
        assert abs(one[i] - got[i]) <= 1e-5, (i, one[i], got[i])
    w1, w2 = final_weights(one_process), final_weights(two)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 5e-5

    resumed = resume_multiprocess(two / "ckpt-00000002", tmp_path / "resumed", corpus, "--max_iters=4", mode,
                                  "--ckpt_interval=-1")
    assert losses(resumed) == {3: got[3], 4: got[4]}
    assert [d for d in os.listdir(resumed) if d.startswith("ckpt-")] == ["ckpt-00000002"]  # -1: none written
    w3 = final_weights(resumed)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)


def test_resume_is_exact(tmp_path, corpus):
    train(tmp_path / "full", corpus, "--max_iters=6")
    train(tmp_path / "split", corpus, "--max_iters=3", "--lr_decay_iters=6")  # the same schedule, stopped at 3
    assert os.path.isdir(tmp_path / "split" / "ckpt-00000003")
    train(tmp_path / "split", corpus, "--max_iters=6", "--init_from=resume")
    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    for i in (4, 5, 6):
        assert full[i] == split[i], (i, full[i], split[i])
    w1, w2 = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


KILL_IN_CKPT = """
import os, signal, sys, torch
import train
real_save = torch.save
def save(obj, path, *a, **k):  # dies right after the checkpoint's shards are written, before it is published
    if "ckpt-00000004.tmp" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *a, **k)
torch.save = save
train.main(sys.argv[1:])
"""


def test_sigterm_checkpoints_and_resume_continues_exactly(tmp_path, corpus):
    import signal
    args = [f"--out_dir={tmp_path / 'run'}", f"--data_dir={corpus}", *TINY, "--max_iters=200", "--ckpt_interval=-1"]
    p = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.jsonl"
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, 120, "3 logged iterations", proc=p)
    p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    assert p.returncode == 0 and "preempted: checkpoint saved at iteration" in out
    from train import latest_checkpoint
    k = int(latest_checkpoint(str(tmp_path / "run")).rsplit("-", 1)[1])
    assert 3 <= k < 200
    train(tmp_path / "run", corpus, "--max_iters=200", "--init_from=resume", f"--lr_decay_iters=200",
          "--ckpt_interval=0", "--export_dtype=", f"--max_iters={k + 3}")
    train(tmp_path / "ref", corpus, f"--max_iters={k + 3}", "--lr_decay_iters=200", "--export_dtype=")
    resumed, ref = losses(tmp_path / "run"), losses(tmp_path / "ref")
    assert [resumed[i] for i in range(k + 1, k + 4)] == [ref[i] for i in range(k + 1, k + 4)]


def test_sigkill_during_checkpoint_write_keeps_previous(tmp_path, corpus):
    args = [f"--out_dir={tmp_path / 'run'}", f"--data_dir={corpus}", *TINY, "--max_iters=6", "--ckpt_interval=2"]
    r = subprocess.run([sys.executable, "-c", KILL_IN_CKPT, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == -9
    names = sorted(os.listdir(tmp_path / "run"))
    assert "ckpt-00000002" in names and "ckpt-00000004.tmp" in names and "ckpt-00000004" not in names
    from weights import load_model
    from train import latest_checkpoint
    assert latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-00000002")
    m = load_model(str(tmp_path / "run" / "ckpt-00000002"))  # loadable as a model
    assert m(torch.tensor([[1, 2, 3]]))[0].isfinite().all()
    train(tmp_path / "run", corpus, "--max_iters=6", "--init_from=resume", "--ckpt_interval=2")
    full = tmp_path / "ref"
    train(full, corpus, "--max_iters=6")
    assert losses(tmp_path / "run")[6] == losses(full)[6]
    assert "ckpt-00000004.tmp" not in os.listdir(tmp_path / "run")  # the rerun wrote it afresh and published it


def test_export_loads_in_transformers_with_same_logits(tmp_path, corpus):
    from transformers import LlamaForCausalLM
    from weights import load_model
    train(tmp_path / "r", corpus, "--max_iters=2", "--export_gguf=f32")
    ours = load_model(str(tmp_path / "r" / "ckpt-00000002"))
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "r" / "hf")).eval()
    assert os.path.isfile(tmp_path / "r" / "hf" / "tokenizer.model")
    idx = torch.randint(0, 32000, (2, 40))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() <= 1e-5
        # the F32 GGUF beside it holds the same weights: read back, the same logits (bf16 HF export aside)
        gguf = load_model(str(tmp_path / "r" / "model-f32.gguf"))
        assert torch.equal(gguf(idx)[0], ours(idx)[0])
    cfg = json.load(open(tmp_path / "r" / "train_config.json"))
    assert cfg["max_iters"] == 2 and cfg["grad_accum"] == 4
    # --export_only: the newest checkpoint exported again, nothing trained: the end-of-run export's weights exactly
    first = final_weights(tmp_path / "r")
    shutil.rmtree(tmp_path / "r" / "hf")
    train(tmp_path / "r", corpus, "--max_iters=4", "--init_from=resume", "--export_only=True")
    again = final_weights(tmp_path / "r")
    assert sorted(again) == sorted(first) and all(torch.equal(first[k], again[k]) for k in first)
    assert sorted(losses(tmp_path / "r")) == [1, 2] and "ckpt-00000003" not in os.listdir(tmp_path / "r")
    # --eval_only: the export's token-weighted loss on the corpus's fixed held-out windows, as transformers has it
    train(tmp_path / "e", corpus, f"--init_from={tmp_path / 'r' / 'hf'}", "--eval_only=True", "--eval_batches=3")
    got = json.load(open(tmp_path / "e" / "eval.json"))
    c = SimpleNamespace(seed=1337, block_size=64, micro_batch_size=2, global_batch_size=6, grad_accum=3)
    from train import PaperWindows
    val = PaperWindows(*load_split(corpus, "val"), c, 0, 1, pad_id=2, shuffle=False)
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in val.micro_batches(0, 0):
            total += torch.nn.functional.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            n += int((y != -100).sum())
    assert got["val_tokens"] == n > 0 and abs(got["val_loss"] - total / n) <= 1e-5, (got, total / n)
    assert not os.path.exists(tmp_path / "e" / "log.jsonl")  # nothing trained


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, corpus):
    r = train(tmp_path / "nan", corpus, "--max_iters=40", "--ckpt_interval=1", "--learning_rate=1e9",
              "--grad_clip=0.0", "--warmup_iters=0", check=False)
    assert r.returncode != 0 and "non-finite loss" in r.stderr
    from train import latest_checkpoint
    last = latest_checkpoint(str(tmp_path / "nan"))
    assert last is not None and f"last good checkpoint: {last}" in r.stderr
    from weights import load_model
    load_model(last)


def test_config_errors(tmp_path, corpus):
    r = train(tmp_path / "x", corpus, "--global_batch_size=7", check=False)
    assert r.returncode != 0 and "not divisible" in r.stderr
    r = train(tmp_path / "x", corpus, "--learning_rat=1", check=False)
    assert r.returncode != 0 and "unknown config key --learning_rat" in r.stderr
    r = train(tmp_path / "x", corpus, "--max_iters=abc", check=False)
    assert r.returncode != 0 and "--max_iters=abc: not a valid int" in r.stderr


# --- the per-paper window sampler -------------------------------------------------------------------

def sampler(corpus, rank=0, world=1, micro=2, gbs=8, block=64):
    from train import PaperWindows
    c = SimpleNamespace(seed=7, block_size=block, micro_batch_size=micro, global_batch_size=gbs,
                        grad_accum=gbs // (micro * world))
    return PaperWindows(*load_split(corpus, "train"), c, rank, world, pad_id=2)


def test_every_paper_once_per_epoch_across_ranks(corpus):
    ranks = [sampler(corpus, r, 2) for r in range(2)]
    n = ranks[0].n
    for epoch in (0, 1):
        seen = [p for s in ranks for step in range(s.steps_per_epoch) for p in s.papers(epoch, step)]
        assert sorted(seen) == list(range(n))
    e0 = [p for step in range(ranks[0].steps_per_epoch) for p in ranks[0].papers(0, step)]
    e1 = [p for step in range(ranks[0].steps_per_epoch) for p in ranks[0].papers(1, step)]
    assert e0 != e1  # shuffled per epoch


def test_windows_differ_between_epochs_and_padding_is_masked(corpus):
    s = sampler(corpus, block=64)
    tokens, idx = load_split(corpus, "train")
    lens = np.diff(idx)
    _, off0 = s._plan(0)
    off0 = off0.copy()
    _, off1 = s._plan(1)
    long = lens > 200
    assert (off0[long] != off1[long]).mean() > 0.9
    assert (off0 <= np.maximum(lens - 64, 0)).all()
    s2 = sampler(corpus, block=512)  # most abstracts are shorter than 512: padded
    rows = [(rx, ry) for x, y in s2.micro_batches(0, 0) for rx, ry in zip(x, y)]
    papers = s2.papers(0, 0)
    assert len(rows) == len(papers) == 8 and any(lens[p] < 512 for p in papers)
    for (row_x, row_y), p in zip(rows, papers):
        real = min(512, lens[p])
        assert (row_y[real - 1:] == -100).all()  # padding (and the last real position) carry no loss
        assert torch.equal(row_y[:real - 1], row_x[1:real])
        if real < 512:  # a whole short paper: BOS ... EOS, then pad
            assert row_x[0] == 1 and row_x[real - 1] == 2 and row_x[:real].tolist() == tokens[idx[p]:idx[p + 1]].tolist()
    # the loss ignores padding: appending pad tokens does not change a document's summed loss
    from model import ModelArgs, Transformer
    m = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=32000, intermediate_size=64, max_seq_len=512))
    m.init_weights()
    x, y = next(iter(s2.micro_batches(0, 0)))
    n = int((y[0] != -100).sum())
    with torch.no_grad():
        a = m(x[:1], y[:1], reduction="sum")[1]
        b = m(x[:1, :n + 1], y[:1, :n + 1], reduction="sum")[1]
    assert abs(a.item() - b.item()) < 1e-3


def test_activation_checkpointing_is_exact_and_bf16_runs(tmp_path, corpus):
    train(tmp_path / "plain", corpus, "--max_iters=2", "--export_dtype=")
    train(tmp_path / "ac", corpus, "--max_iters=2", "--export_dtype=", "--activation_checkpointing=True")
    assert losses(tmp_path / "plain") == losses(tmp_path / "ac")
    train(tmp_path / "bf16", corpus, "--max_iters=2", "--dtype=bfloat16", "--export_dtype=bfloat16")
    l32, l16 = losses(tmp_path / "plain"), losses(tmp_path / "bf16")
    assert all(abs(l32[i] - l16[i]) < 0.05 for i in l32) and l32 != l16  # bf16 compute: close, not identical
    import json as _json
    assert _json.load(open(tmp_path / "bf16" / "hf" / "config.json"))["torch_dtype"] == "bfloat16"
