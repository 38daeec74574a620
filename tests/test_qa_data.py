import json

import pytest
import sentencepiece as spm

import qa_data
from conftest import data_path


def test_real_file_counts():
    pqal = data_path("pubmedqa", "ori_pqal.json")
    test, train, every = (qa_data.load("pubmedqa", pqal, split=s) for s in ("test", "train", "all"))
    assert (len(test), len(train), len(every)) == (500, 500, 1000)
    gt = json.load(open(data_path("pubmedqa", "test_ground_truth.json")))
    assert {e.id for e in test} == set(gt) and not {e.id for e in train} & set(gt)
    assert all(e.answer == " " + gt[e.id] for e in test)
    med = qa_data.load("medmcqa", data_path("medmcqa", "dev.json"), cop_base=1)
    assert len(med) == 4183 and sum(e.gold == 0 for e in med) == 1348  # cop counts 1:1348 per PROVENANCE
    assert len({e.info["subject"] for e in med}) == 21
    us = qa_data.load("usmle", data_path("medqa_usmle", "sample_200.jsonl"))
    assert len(us) == 200 and us[0].choices == [" A", " B", " C", " D"]
    assert qa_data.load("usmle", data_path("medqa_usmle", "sample_200.jsonl"), select="100:200")[0].id == us[100].id


def test_prompts_are_the_harness_templates():
    rec = json.loads(open(data_path("medmcqa", "dev.json")).readline())
    e = qa_data.load("medmcqa", data_path("medmcqa", "dev.json"), cop_base=1)[0]
    assert e.prompt == (f"Question: {rec['question']}\nChoices:\nA. {rec['opa']}\nB. {rec['opb']}\nC. {rec['opc']}\n"
                        f"D. {rec['opd']}\nAnswer:")
    assert e.gold == rec["cop"] - 1
    rec = json.loads(open(data_path("medqa_usmle", "sample_200.jsonl")).readline())
    u = qa_data.load("usmle", data_path("medqa_usmle", "sample_200.jsonl"))[0]
    o = rec["options"]
    assert u.prompt == f"Question: {rec['question']}\nA. {o['A']}\nB. {o['B']}\nC. {o['C']}\nD. {o['D']}\nAnswer:"
    assert u.answer == " " + rec["answer_idx"] and u.info["meta_info"] == rec["meta_info"]
    recs = json.load(open(data_path("pubmedqa", "ori_pqal.json")))
    p = qa_data.load("pubmedqa", data_path("pubmedqa", "ori_pqal.json"), split="all")[0]
    r = recs[p.id]
    assert p.prompt == "Abstract: " + "\n".join(r["CONTEXTS"]) + f"\nQuestion: {r['QUESTION']}\nAnswer:"
    assert p.choices == [" yes", " no", " maybe"] and p.answer == " " + r["final_decision"]


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=data_path("tokenizer", "llama_tokenizer.model"))


@pytest.mark.parametrize("bench,file", [("pubmedqa", ("pubmedqa", "ori_pqal.json")), ("medmcqa", ("medmcqa", "dev.json")),
                                        ("usmle", ("medqa_usmle", "sample_200.jsonl"))])
def test_only_answer_tokens_carry_loss(bench, file, sp):
    examples = qa_data.load(bench, data_path(*file), split="all", cop_base=1)[:20]
    for e in examples:
        ids, labels = qa_data.encode_example(sp.encode, 1, e, 2048)
        ctx = sp.encode(e.prompt)
        ans = sp.encode(e.prompt + e.answer)[len(ctx):]
        assert ids == [1] + ctx + ans and len(labels) == len(ids)
        carried = [(t, l) for t, l in enumerate(labels) if l != -100]
        assert [l for _, l in carried] == ans  # exactly the answer tokens ...
        assert all(ids[t + 1] == l for t, l in carried)  # ... each predicted from the position before it
        assert [t + 1 for t, _ in carried] == list(range(len(ids) - len(ans), len(ids)))
        assert sp.decode(ans) == e.answer.strip()


def test_truncation_keeps_bos_and_answer(sp):
    e = qa_data.load("pubmedqa", data_path("pubmedqa", "ori_pqal.json"), split="all")[0]
    full, _ = qa_data.encode_example(sp.encode, 1, e, 4096)
    assert len(full) > 64
    ids, labels = qa_data.encode_example(sp.encode, 1, e, 64)
    ans = [l for l in labels if l != -100]
    assert len(ids) == 64 and ids[0] == 1 and ids[-len(ans):] == ans == full[-len(ans):]
    assert ids[1:-len(ans)] == full[len(full) - 63:-len(ans)]  # the prompt lost its *beginning*
    assert sum(l != -100 for l in labels) == len(ans)


# --- malformed records ----------------------------------------------------------------------------

def write_lines(tmp_path, name, records):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(p)


MED = {"question": "q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2, "subject_name": "Anatomy", "id": "x"}
US = {"question": "q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "B", "answer": "b",
      "meta_info": "step1"}


def test_medmcqa_errors(tmp_path):
    bad = {k: v for k, v in MED.items() if k != "opc"}
    p = write_lines(tmp_path, "m.json", [MED, bad])
    with pytest.raises(qa_data.QAFormatError, match=r"m.json:2: field 'opc'"):
        qa_data.load("medmcqa", p, cop_base=1)
    p = write_lines(tmp_path, "zero.json", [MED, {**MED, "cop": 0}])
    with pytest.raises(qa_data.QAFormatError, match=r"zero.json:2: field 'cop': 0 is outside 1..4.*cop_base=0"):
        qa_data.load("medmcqa", p, cop_base=1)
    p = write_lines(tmp_path, "four.json", [{**MED, "cop": 4}])
    with pytest.raises(qa_data.QAFormatError, match=r"four.json:1: field 'cop': 4 is outside 0..3.*cop_base=1"):
        qa_data.load("medmcqa", p, cop_base=0)
    assert qa_data.load("medmcqa", write_lines(tmp_path, "ok.json", [MED]), cop_base=0)[0].gold == 2
    p = write_lines(tmp_path, "nocop.json", [{**MED, "cop": None}])
    with pytest.raises(qa_data.QAFormatError, match="field 'cop'"):
        qa_data.load("medmcqa", p, cop_base=1)


def test_medmcqa_real_dev_read_as_zero_based_fails_loudly():
    with pytest.raises(qa_data.QAFormatError, match="field 'cop': 4 is outside 0..3"):
        qa_data.load("medmcqa", data_path("medmcqa", "dev.json"), cop_base=0)


def test_usmle_errors(tmp_path):
    p = write_lines(tmp_path, "u.jsonl", [US, {**US, "answer_idx": "E"}])
    with pytest.raises(qa_data.QAFormatError, match=r"u.jsonl:2: field 'answer_idx': 'E' is not among the options"):
        qa_data.load("usmle", p)
    p = write_lines(tmp_path, "k.jsonl", [{**US, "options": {"A": "a", "B": "b", "X": "c", "D": "d"}}])
    with pytest.raises(qa_data.QAFormatError, match=r"k.jsonl:1: field 'options': keys"):
        qa_data.load("usmle", p)
    p = write_lines(tmp_path, "a.jsonl", [{**US, "answer": "c"}])
    with pytest.raises(qa_data.QAFormatError, match=r"a.jsonl:1: field 'answer'"):
        qa_data.load("usmle", p)
    p = write_lines(tmp_path, "q.jsonl", [{k: v for k, v in US.items() if k != "question"}])
    with pytest.raises(qa_data.QAFormatError, match=r"q.jsonl:1: field 'question'"):
        qa_data.load("usmle", p)


def test_pubmedqa_errors_and_unknown_bench(tmp_path):
    recs = json.load(open(data_path("pubmedqa", "ori_pqal.json")))
    k = next(iter(recs))
    recs[k]["final_decision"] = "perhaps"
    p = tmp_path / "ori_pqal.json"
    p.write_text(json.dumps(recs))
    with pytest.raises(qa_data.QAFormatError, match=rf"{k}: field 'final_decision': 'perhaps'"):
        qa_data.load("pubmedqa", str(p), split="all")
    with pytest.raises(FileNotFoundError, match="test_ground_truth.json"):
        qa_data.load("pubmedqa", str(p), split="test")
    del recs[k]["CONTEXTS"]
    recs[k]["final_decision"] = "yes"
    p.write_text(json.dumps(recs))
    with pytest.raises(qa_data.QAFormatError, match="field 'CONTEXTS'"):
        qa_data.load("pubmedqa", str(p), split="all")
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'; known: pubmedqa, medmcqa, usmle"):
        qa_data.load("mmlu", str(p))


def test_official_split_files_are_their_split_alone(tmp_path):
    """PubMedQA's split script writes test_set.json (and pqal_fold*/train_set.json, dev_set.json): each is one split
    by itself, read without test_ground_truth.json beside it."""
    src = data_path("pubmedqa", "test_set.json")
    gt = json.load(open(data_path("pubmedqa", "test_ground_truth.json")))
    alone = tmp_path / "test_set.json"  # no test_ground_truth.json in this folder
    alone.write_bytes(open(src, "rb").read())
    test = qa_data.load("pubmedqa", str(alone))
    assert len(test) == 500 and {e.id for e in test} == set(gt)
    assert all(e.answer == " " + gt[e.id] for e in test)
    ref = {e.id: e.prompt for e in qa_data.load("pubmedqa", data_path("pubmedqa", "ori_pqal.json"), split="test")}
    assert all(ref[e.id] == e.prompt for e in test)
    with pytest.raises(qa_data.QAFormatError, match="holds only test questions"):
        qa_data.load("pubmedqa", str(alone), split="train")
    recs = json.load(open(data_path("pubmedqa", "ori_pqal.json")))
    dev = tmp_path / "dev_set.json"
    dev.write_text(json.dumps({k: v for k, v in recs.items() if k not in gt}))
    assert len(qa_data.load("pubmedqa", str(dev), split="train")) == 500
    with pytest.raises(qa_data.QAFormatError, match="holds only train questions"):
        qa_data.load("pubmedqa", str(dev))
