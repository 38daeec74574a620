import json
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch

from conftest import ROOT, data_path, make_hf_with_tokenizer
from tokenizer import Tokenizer


def test_llama_tokenizer_matches_sentencepiece(tokenizer_path):
    records = json.load(open(data_path("pubmedqa", "ori_pqal.json")))
    abstract = "\n".join(next(iter(records.values()))["CONTEXTS"])
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    tok = Tokenizer(tokenizer_path)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 32000)
    ids = tok.encode(abstract, bos=True, eos=True)
    assert ids == [1] + sp.encode(abstract) + [2]
    assert tok.decode(ids) == abstract
    assert tok.encode_batch([abstract, "x"], bos=True) == [[1] + sp.encode(abstract), [1] + sp.encode("x")]
    assert tok.encode("The patient presented with acute myocardial infarction.") == [
        450, 16500, 9132, 411, 1274, 1082, 590, 542, 538, 616, 3041, 279, 428, 29889]


def test_tokenizer_found_in_folder_or_clear_error(tmp_path, tokenizer_path):
    import shutil
    shutil.copy(tokenizer_path, tmp_path / "tokenizer.model")
    assert Tokenizer(str(tmp_path)).vocab_size == 32000
    with pytest.raises(FileNotFoundError, match="no sentencepiece tokenizer"):
        Tokenizer(str(tmp_path / "missing"))


def _hf_with_tokenizer(tmp_path, tokenizer_path):
    return make_hf_with_tokenizer(tmp_path / "hf", hidden_size=32, intermediate_size=64, num_hidden_layers=1)


def test_sample_cli_greedy_matches_transformers(tmp_path, tokenizer_path):
    from transformers import LlamaForCausalLM
    path = _hf_with_tokenizer(tmp_path, tokenizer_path)
    prompt = "Aspirin inhibits"
    r = subprocess.run([sys.executable, "sample.py", f"--init_from={path}", f"--prompt={prompt}",
                        "--max_new_tokens=12", "--temperature=0", "--device=cpu", "--dtype=float32"],
                       cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert "tokens/s" in r.stderr
    tok = Tokenizer(path)
    hf = LlamaForCausalLM.from_pretrained(path).eval()
    ref = hf.generate(torch.tensor([tok.encode(prompt, bos=True)]), max_new_tokens=12, do_sample=False,
                      pad_token_id=0)
    ids = ref[0, 1:].tolist()
    expect = tok.decode(ids[:-1] if ids[-1] == tok.eos_id else ids)
    assert r.stdout.splitlines()[0] == expect.splitlines()[0]
    assert r.stdout.startswith(expect)


def test_sample_cli_empty_prompt_and_sampling(tmp_path, tokenizer_path):
    path = _hf_with_tokenizer(tmp_path, tokenizer_path)
    cmd = [sys.executable, "sample.py", f"--init_from={path}", "--prompt=", "--max_new_tokens=5",
           "--temperature=1.0", "--top_k=50", "--seed=3", "--device=cpu", "--num_samples=2"]
    a = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    b = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    assert a == b and a.count("---------------") == 2  # seeded: reproducible
    bad = subprocess.run([sys.executable, "sample.py", "--init_from=x", "--tempreature=0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown config key --tempreature" in bad.stderr
