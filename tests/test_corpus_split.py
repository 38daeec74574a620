"""prepare_corpus's train/val split and its short-document filter, against counts computed here."""
import json

import numpy as np
import pytest
import sentencepiece as spm

import prepare_corpus as pc
from conftest import data_path
from corpus_data import load_split


def test_split_fraction_seed_and_determinism():
    keys = [f"PMC{i}" for i in range(20000)]
    val = {k for k in keys if pc.split_of(k, 1337, 0.1) == "val"}
    assert abs(len(val) / len(keys) - 0.1) <= 0.01  # binomial sd 0.002
    assert val == {k for k in keys if pc.split_of(k, 1337, 0.1) == "val"}  # a function of (seed, key) alone
    other = {k for k in keys if pc.split_of(k, 7, 0.1) == "val"}
    assert abs(len(other) / len(keys) - 0.1) <= 0.01 and len(val & other) < 0.2 * len(val)  # a new seed, a new draw
    assert val < {k for k in keys if pc.split_of(k, 1337, 0.3) == "val"}  # a larger fraction only adds documents
    assert all(pc.split_of(k, 1337, 0.0) == "train" and pc.split_of(k, 1337, 1.0) == "val" for k in keys[:500])


@pytest.mark.parametrize("limit", [11, 5])  # 11: a document of exactly 11 is kept; 5: one of 4 (+ BOS, EOS) is not
def test_min_tokens_counts_text_tokens_without_bos_and_eos(tmp_path, limit):
    tokenizer = data_path("tokenizer", "llama_tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    texts = ["Aspirin inhibits platelet aggregation.", "Metformin lowers hepatic glucose output in type 2 diabetes.",
             "Insulin."]
    lengths = [len(sp.encode(t)) for t in texts]
    assert lengths == [11, 20, 4]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    meta = pc.main(["--source", "jsonl", "--input", str(tmp_path / "d.jsonl"), "--tokenizer", tokenizer,
                    "--out_dir", str(tmp_path / "out"), "--val_fraction", "0", "--workers", "1", "--quiet",
                    "--min_tokens", str(limit)])
    kept = [t for t, n in zip(texts, lengths) if n >= limit]
    assert meta["skipped"] == {"too_short": len(texts) - len(kept)} and len(kept) == 2
    tokens, idx = load_split(str(tmp_path / "out"), "train")
    docs = [tokens[idx[i]:idx[i + 1]].tolist() for i in range(len(idx) - 1)]
    assert docs == [[1] + sp.encode(t) + [2] for t in kept]
    assert meta["splits"]["train"]["tokens"] == sum(len(sp.encode(t)) + 2 for t in kept)
    assert np.diff(idx).tolist() == [len(sp.encode(t)) + 2 for t in kept]
