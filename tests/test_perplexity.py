"""The general side of eval_qa.py: perplexity (perplexity.py: rolling windows, WikiText's detokenizer, the harness'
three metrics) against closed forms and transformers, MMLU's 57 subjects in the harness' categories, and one-line
errors for bad input."""
import json
import math

import pytest
import torch

import eval_qa
import perplexity
import qa_data
from conftest import make_hf_with_tokenizer


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A random tiny LLaMA with the 32k LLaMA tokenizer (BOS 1): quick to load, enough for errors and bookkeeping."""
    return make_hf_with_tokenizer(tmp_path_factory.mktemp("m") / "hf")


def test_rolling_windows_cover_every_token_once():
    toks = list(range(1, 11))
    w = perplexity.rolling_windows(toks, 0, 4)
    # the last window scores 9 and 10, filled to 4 positions with 6, 7 as context (lm_eval's rolling windows)
    assert w == [([0, 1, 2, 3], [1, 2, 3, 4]), ([4, 5, 6, 7], [5, 6, 7, 8]), ([6, 7, 8, 9], [-100, -100, 9, 10])]
    for max_len in (1, 2, 3, 10, 11, 50):
        w = perplexity.rolling_windows(toks, 0, max_len)
        assert [t for _, ts in w for t in ts if t != -100] == toks  # each token predicted exactly once, in order
        for inputs, targets in w:  # input t is the token before target t
            assert len(inputs) == len(targets) == min(max_len, len(toks))
            assert all(i == t - 1 for i, t in zip(inputs, targets) if t != -100)
    assert perplexity.rolling_windows([], 0, 4) == []


def test_wikitext_detokenizer_rules():
    page = (' = Title = \n The Great War ( 1914 @-@ 1918 ) cost 3 @,@ 000 @.@ 5 lives , he said : " no " ; '
            "it is the players ' club 's best . = = Section = = \n 25 \u00b0 C N")
    assert perplexity.wikitext_detokenize(page) == (
        ' = Title =\nThe Great War (1914-1918) cost 3,000.5 lives, he said: "no"; '
        "it is the players'club's best. == Section ==\n25\u00b0C N")  # ' club ' is a quoted span to the rules


def test_metrics_closed_form():
    m = perplexity.metrics([-10.0, -20.0], ["a b c", " x  y"], n_tokens=12)
    assert m["words"] == 3 + 3 and m["bytes"] == 5 + 5  # " x  y" splits into '', 'x', 'y'
    assert m["word_perplexity"] == pytest.approx(math.exp(30 / 6))
    assert m["byte_perplexity"] == pytest.approx(math.exp(3))
    assert m["bits_per_byte"] == pytest.approx(3 / math.log(2))
    assert m["token_perplexity"] == pytest.approx(math.exp(30 / 12))


def test_rolling_loglikelihood_equals_transformers_per_window():
    """Our windows scored by our model = transformers' LlamaForCausalLM on the same windows (fp32, 1e-4), and the
    first window's total equals one full forward when the document fits."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from model import ModelArgs, Transformer
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, intermediate_size=128,
                     max_seq_len=64)
    ours = Transformer(args)
    ours.init_weights(seed=1)
    ours.eval()
    hf = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=300, intermediate_size=128,
                                      max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False))
    hf.load_state_dict(ours.state_dict(), strict=False)
    hf.eval()
    doc = torch.randint(1, 300, (150,)).tolist()
    windows = perplexity.rolling_windows(doc, 0, 64)
    got = eval_qa.score_windows(ours, windows, batch_size=2, device="cpu", chunk=16, progress=False)
    for (inputs, targets), g in zip(windows, got):
        scored = [(i, t) for i, t in enumerate(targets) if t != -100]
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([inputs])).logits[0].float(), -1)
        ref = sum(lp[i, t].item() for i, t in scored)
        assert abs(g - ref) <= 1e-4 * len(scored), (g, ref)
    assert len(windows) == 3 and [sum(t != -100 for t in ts) for _, ts in windows] == [64, 64, 22]


def test_mmlu_categories_and_group_rows():
    assert len(qa_data.MMLU_ALL) == 57 and sum(map(len, qa_data.MMLU_CATEGORIES.values())) == 57
    assert qa_data.expand_benches("mmlu_all") == [f"mmlu_{s}" for s in qa_data.MMLU_ALL]
    assert qa_data.mmlu_category("mmlu_anatomy") == "stem" and qa_data.mmlu_category("mmlu_virology") == "other"
    r = lambda n, k: {"n": n, "correct": k, "acc": k / n, "acc_norm": None}  # noqa: E731
    results = {"mmlu_anatomy": r(10, 5), "mmlu_astronomy": r(30, 3), "mmlu_philosophy": r(20, 10)}
    rows = eval_qa.summarize(results)
    assert rows["mmlu_stem (pooled)"]["acc"] == pytest.approx(8 / 40)
    assert rows["mmlu_humanities (pooled)"]["acc"] == pytest.approx(0.5)
    assert rows["mmlu, 3 subjects (pooled)"]["acc"] == pytest.approx(18 / 60)  # the harness' group: by size
    assert rows["mmlu, 3 subjects (macro)"]["acc"] == pytest.approx((0.5 + 0.1 + 0.5) / 3)
    assert "mean of 1 tasks" not in rows and "mmlu_other (pooled)" not in rows


@pytest.mark.parametrize("spec", ["leaderboard", "mmlu_astrology", "pubmedqa,,wikitext2"])
def test_unknown_bench_is_one_line(spec):
    with pytest.raises(SystemExit) as e:
        eval_qa.parse_benches(spec)
    msg = str(e.value)
    assert "\n" not in msg and "unknown benchmark" in msg and "mmlu_all" in msg and "wikitext" in msg


def test_bad_perplexity_input_is_one_line(tmp_path, tiny_hf):
    base = [f"--init_from={tiny_hf}", f"--out={tmp_path / 'out'}", "--bench=ppl"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "nopages.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("One small document.")
    cases = [([f"--data={tmp_path / 'empty'}"], "no .txt files"),
             ([f"--data={tmp_path / 'nopages.jsonl'}"], "no documents"),
             ([f"--data={tmp_path / 'bad.jsonl'}"], "bad.jsonl:2: field 'text'"),
             ([], "--bench=ppl scores your text"),
             ([f"--data={tmp_path / 'docs'}", "--max_length=1"], "max_length=1: rolling windows need 2")]
    for extra, want in cases:
        with pytest.raises(SystemExit) as e:
            eval_qa.main(base + extra)
        assert want in str(e.value) and "\n" not in str(e.value), (extra, str(e.value))
    with pytest.raises(SystemExit, match="download.py --benchmarks --data_root="):
        eval_qa.main([f"--init_from={tiny_hf}", "--bench=wikitext", f"--data_root={tmp_path}"])


def test_corpus_without_val_split_is_refused(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"splits": {"val": {"documents": 0}}, "tokenizer": "x"}))
    with pytest.raises(SystemExit, match="no val split"):
        perplexity.load_documents(str(tmp_path))


def test_ppl_on_a_text_folder_end_to_end(tmp_path, tiny_hf):
    """--bench=ppl on a folder: the JSON's metrics follow from its per-document log-likelihoods (closed form)."""
    (tmp_path / "docs").mkdir()
    texts = ["Metformin is a first-line drug for type 2 diabetes.", "The cat sat on the mat. " * 3]
    for i, t in enumerate(texts):
        (tmp_path / "docs" / f"{i}.txt").write_text(t)
    res = eval_qa.main([f"--init_from={tiny_hf}", f"--out={tmp_path / 'out'}", "--bench=ppl",
                        f"--data={tmp_path / 'docs'}", "--max_length=8"])["ppl"]
    rows = [json.loads(l) for l in open(tmp_path / "out" / "predictions.jsonl")]
    ll, n_bytes = sum(r["loglikelihood"] for r in rows), sum(len(t.encode()) for t in texts)
    assert res["bits_per_byte"] == pytest.approx(-ll / n_bytes / math.log(2))
    assert res["windows"] == sum(math.ceil(r["tokens"] / 8) for r in rows) and all(r["loglikelihood"] < 0 for r in rows)


def test_ppl_on_a_prepared_corpus_val_split(tmp_path, tiny_hf):
    """--bench=ppl on a prepare_corpus.py out_dir: its val documents, decoded with the corpus' tokenizer (BOS and
    EOS dropped), scored as text."""
    import prepare_corpus
    from conftest import data_path
    from corpus_data import load_split
    from tokenizer import Tokenizer
    tok_path = data_path("tokenizer", "llama_tokenizer.model")
    prepare_corpus.main(["--source", "pubtator", "--input",
                         data_path("biomed_corpus", "bc5cdr", "CDR_DevelopmentSet.PubTator.txt"), "--tokenizer",
                         tok_path, "--out_dir", str(tmp_path / "c"), "--val_fraction", "0.05", "--workers", "1",
                         "--quiet"])
    tokens, idx = load_split(str(tmp_path / "c"), "val")
    docs = perplexity.load_documents(str(tmp_path / "c"))
    tok = Tokenizer(tok_path)
    assert len(docs) == len(idx) - 1 > 5
    assert tok.encode(docs[0], bos=True, eos=True) == tokens[idx[0]:idx[1]].tolist()
    res = eval_qa.main([f"--init_from={tiny_hf}", f"--out={tmp_path / 'out'}", "--bench=ppl",
                        f"--data={tmp_path / 'c'}", "--max_length=128"])["ppl"]
    assert res["n"] == len(docs) and res["bits_per_byte"] > 0
