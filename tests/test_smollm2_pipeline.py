"""The start of the pipeline straight from a real GGUF, SmolLM2-135M-Instruct (byte-level BPE, no BOS, tied
embeddings): prepare_corpus with the GGUF's own vocabulary -> train.py from the GGUF on 2 processes. The rest
(fine-tuning full and LoRA, eval with an adapter, sample.py) runs on the same model in test_reproduce.py's study."""
import json
import os
import subprocess
import sys

import numpy as np

import prepare_corpus as pc
from conftest import ROOT, data_path, torchrun
from test_train import ENV, ENV_DIST

SMALL = ["--device=cpu", "--dtype=float32", "--log_interval=1", "--eval_interval=0", "--ckpt_interval=0",
         "--warmup_iters=1"]


def run(*cmd, env=ENV, timeout=420):
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def test_smollm2_end_to_end(tmp_path, smollm2_gguf):
    from tokenizer import Tokenizer
    tok = Tokenizer(smollm2_gguf)
    corpus = tmp_path / "corpus"
    pc.main(["--source", "pubtator", "--input", data_path("biomed_corpus", "ncbi_disease", "NCBItestset_corpus.txt"),
             "--tokenizer", smollm2_gguf, "--out_dir", str(corpus), "--val_fraction", "0.1", "--workers", "1",
             "--quiet"])
    meta = json.load(open(corpus / "meta.json"))
    assert meta["vocab_size"] == 49152 and meta["bos_id"] == tok.bos_id
    docs = np.fromfile(corpus / "train.bin", dtype=meta["dtype"])
    idx = np.fromfile(corpus / "train.idx", dtype=np.int64)
    first = docs[idx[0]:idx[1]].tolist()
    assert first[0] != tok.bos_id and first[-1] == tok.eos_id  # SmolLM2's convention: no BOS, EOS ends a document

    pre = tmp_path / "pre"
    run(*torchrun(2, "train.py")[1:],
        f"--init_from={smollm2_gguf}", f"--data_dir={corpus}", f"--out_dir={pre}", "--block_size=64",
        "--micro_batch_size=2", "--global_batch_size=4", "--max_iters=3", "--learning_rate=1e-4",
        "--export_dtype=float32", *SMALL, env=ENV_DIST)
    losses = [json.loads(l)["loss"] for l in open(pre / "log.jsonl") if '"loss"' in l]
    assert len(losses) == 3 and all(0 < x < 6 for x in losses)  # pretrained: far below a random model's ln(49152) = 10.8
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(pre / "hf"))
