"""Training on a weighted mixture of corpora (data_dir='A:0.75,B:0.25'): rigged corpora whose documents carry their
source in their tokens give each step's realized shares per step and per rank; 1 process and 2 processes see the
same global batches and losses; a resumed run continues exactly mid-epoch; a source of another tokenizer is refused.
A single data_dir keeps today's behaviour (tests/test_train.py, unchanged)."""
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import prepare_corpus as pc
import train
from conftest import data_path
from corpus_data import CorpusWriter, load_split
from test_train import losses, train as run_train


def rigged_corpus(path, marker, n_docs, seed, tokenizer_sha="x" * 64):
    """A prepared corpus whose every token is `marker` (documents of 20..200 tokens, a few shorter than a window)."""
    rng = np.random.default_rng(seed)
    w = CorpusWriter(str(path), np.uint16)
    for _ in range(n_docs):
        w.add("train", np.full(int(rng.integers(20, 200)), marker, dtype=np.uint16))
    w.publish({"dtype": "uint16", "splits": {s: {"documents": w.documents[s], "tokens": w.tokens[s]} for s in w.paths},
               "tokenizer": "rigged", "tokenizer_sha256": tokenizer_sha, "vocab_size": 256, "eos_id": 2})
    return str(path)


def config(world, micro, gbs, block=64):
    return SimpleNamespace(seed=7, block_size=block, micro_batch_size=micro, global_batch_size=gbs,
                           grad_accum=gbs // (micro * world))


def test_rows_per_source_closed_form():
    assert train.mixture_rows([0.9, 0.1], 128) == [115, 13]  # 115.2 and 12.8: each within one row
    assert train.mixture_rows([0.75, 0.25], 16) == [12, 4]
    assert train.mixture_rows([1 / 3] * 3, 128) == [43, 43, 42]
    assert train.data_sources("data/pmc") == [("data/pmc", 1.0)]
    assert train.data_sources("a:3, b:1") == [("a", 0.75), ("b", 0.25)]
    with pytest.raises(SystemExit, match="'b:0' is not FOLDER:WEIGHT"):
        train.data_sources("a:1,b:0")


def test_realized_shares_per_step_and_rank(tmp_path):
    a, b = rigged_corpus(tmp_path / "a", 10, 90, 0), rigged_corpus(tmp_path / "b", 20, 13, 1)
    splits = [load_split(a, "train"), load_split(b, "train")]
    world, gbs = 2, 16
    mixes = [train.Mixture(splits, ["a", "b"], [0.75, 0.25], config(world, 2, gbs), r, world, pad_id=0)
             for r in range(world)]
    assert mixes[0].rows == [12, 4] and mixes[0].steps_per_epoch == 8  # 90 papers at 12 a step
    seen_b = []
    for it in range(20):  # two and a half epochs of a; b cycles through its 13 papers every 4 steps
        epoch, step = divmod(it, mixes[0].steps_per_epoch)
        counts = {10: 0, 20: 0, "pad": 0}
        items = mixes[0].step_items(epoch, step)
        for r, m in enumerate(mixes):
            got = []
            for x, y in m.micro_batches(epoch, step):
                for row in x.numpy():
                    kinds = set(row[row != 0].tolist())
                    assert len(kinds) <= 1  # a row is one paper of one source
                    got.append(kinds.pop() if kinds else "pad")
                    counts[got[-1]] += 1
            # this rank's rows: its slots of the step, (micro-step m * world + rank) x micro_batch_size onwards
            slots = [j for rows in train.step_rows(gbs, 0, config(world, 2, gbs), r, world) for j in rows]
            assert got == [(10, 20)[items[j][0]] if items[j][1] >= 0 else "pad" for j in slots], (it, r)
        # every step: 12 rows for a and 4 for b; rows past the end of a source's own epoch are padding
        assert [i for i, _ in items] == [0] * 12 + [1] * 4
        a_rows, b_rows = (sum(p >= 0 for i, p in items if i == src) for src in (0, 1))
        assert (counts[10], counts[20], counts["pad"]) == (a_rows, b_rows, gbs - a_rows - b_rows), (it, counts)
        assert a_rows == (12 if step < 7 else 90 - 7 * 12) and b_rows == (4 if it % 4 < 3 else 1)
        seen_b += [p for i, p in items if i == 1]
        toks = mixes[0].step_tokens(epoch, step)
        assert toks["tokens/b"] == sum(min(int(np.diff(splits[1][1])[p]), 64) for i, p in items if i == 1 and p >= 0)
    # b's own epochs: each of its papers once every 4 steps (13 papers in 4 x 4 rows, 3 rows padded)
    for e in range(5):
        chunk = seen_b[16 * e:16 * e + 16]
        assert sorted(p for p in chunk if p >= 0) == list(range(13)) and chunk.count(-1) == 3


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """Two real corpora with the LLaMA tokenizer: BC5CDR abstracts and CRAFT full texts."""
    root = tmp_path_factory.mktemp("mix")
    tok = data_path("tokenizer", "llama_tokenizer.model")
    for name, src, inp in (("cdr", "pubtator", data_path("biomed_corpus", "bc5cdr", "CDR_DevelopmentSet.PubTator.txt")),
                           ("craft", "text", data_path("biomed_corpus", "craft_pmc_oa_fulltext", "txt"))):
        pc.main(["--source", src, "--input", inp, "--tokenizer", tok, "--out_dir", str(root / name),
                 "--val_fraction", "0.1", "--workers", "1", "--quiet"])
    return f"{root / 'cdr'}:0.75,{root / 'craft'}:0.25"


def test_one_and_two_processes_and_resume_with_a_mixture(tmp_path, mixture):
    """1 process (grad_accum 4) and 2 (grad_accum 2) over 4 steps of the mixture: the same losses (1e-5, as for one
    corpus); the log has each source's tokens and held-out loss; resumed from step 2, steps 3-4 bit for bit."""
    extra = ["--max_iters=4", "--ckpt_interval=2", "--eval_interval=2", "--eval_batches=2"]
    run_train(tmp_path / "one", mixture, *extra)
    run_train(tmp_path / "two", mixture, *extra, nproc=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == [1, 2, 3, 4] and all(abs(one[i] - two[i]) <= 1e-5 for i in one), (one, two)
    log = [json.loads(l) for l in open(tmp_path / "one" / "log.jsonl")]
    names = [p.rpartition(":")[0] for p in mixture.split(",")]
    assert all(r[f"tokens/{n}"] > 0 for r in log for n in names)
    assert all(f"val_loss/{n}" in log[1] for n in names) and log[1]["val_loss"] == log[1][f"val_loss/{names[0]}"]
    resumed = tmp_path / "resumed"
    os.makedirs(resumed)
    shutil.copytree(tmp_path / "one" / "ckpt-00000002", resumed / "ckpt-00000002")
    run_train(resumed, mixture, *extra, "--init_from=resume")
    assert {i: v for i, v in losses(resumed).items()} == {3: one[3], 4: one[4]}


def test_mixture_of_two_tokenizers_is_refused(tmp_path):
    a = rigged_corpus(tmp_path / "a", 10, 20, 0, tokenizer_sha="a" * 64)
    b = rigged_corpus(tmp_path / "b", 20, 20, 1, tokenizer_sha="b" * 64)
    r = run_train(tmp_path / "out", f"{a}:0.5,{b}:0.5", "--max_iters=1", check=False)
    assert r.returncode != 0 and "was prepared with another tokenizer" in r.stderr


def test_bits_per_byte_in_training_equals_eval_qa(tmp_path, mixture):
    """bpb_data: train.py's held-out bits per byte (its windows spread over ranks, FSDP) equals eval_qa.py
    --bench=ppl's on the same model and text with max_length = block_size, on 1 and on 2 processes."""
    import eval_qa
    from conftest import make_hf_with_tokenizer
    pages = perplexity_pages(tmp_path / "pages.jsonl", (28, 29, 57))
    hf = make_hf_with_tokenizer(tmp_path / "hf")
    ref = eval_qa.main([f"--init_from={hf}", "--bench=ppl", f"--data={pages}", "--max_length=64",
                        f"--out={tmp_path / 'ev'}"])["ppl"]["bits_per_byte"]
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}"
        run_train(out, mixture, "--eval_only=True", f"--init_from={hf}", f"--bpb_data={pages}", nproc=nproc)
        got = json.load(open(out / "eval.json"))["val_bpb/pages.jsonl"]
        assert abs(got - ref) <= 1e-6 * ref, (nproc, got, ref)


def perplexity_pages(path, ids):
    """Three WikiText-2 test pages (one of 31 tokens, longer ones in several 64-token windows)."""
    lines = open(data_path("general", "wikitext2_test_raw", "wikitext-test-pages.jsonl"), encoding="utf-8").readlines()
    path.write_text("".join(lines[i] for i in ids), encoding="utf-8")
    return str(path)
