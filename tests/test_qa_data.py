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
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu_astrology'; known: pubmedqa, medmcqa, usmle"):
        qa_data.load("mmlu_astrology", str(p))


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


# --- MMLU's medical subjects, any number of options, benchmark groups ------------------------------------------------

# per subject: questions and answers A/B/C/D, from mmlu_medical/PROVENANCE.md (the official test split's counts)
MMLU_COUNTS = {"anatomy": (25, 34, 45, 31), "clinical_knowledge": (57, 71, 58, 79), "college_biology": (37, 32, 37, 38),
               "college_medicine": (36, 36, 43, 58), "medical_genetics": (30, 26, 20, 24),
               "professional_medicine": (50, 55, 45, 122)}


def test_mmlu_real_files():
    total = 0
    for subject, counts in MMLU_COUNTS.items():
        ex = qa_data.load(f"mmlu_{subject}", data_path("mmlu_medical", f"{subject}_test.csv"))
        assert tuple(sum(e.gold == j for e in ex) for j in range(4)) == counts, subject
        assert all(e.choices == [" A", " B", " C", " D"] and e.info["subject"] == subject for e in ex)
        total += len(ex)
    assert total == 1089
    first = qa_data.load("mmlu_anatomy", data_path("mmlu_medical", "anatomy_test.csv"))[0]
    assert first.prompt == (  # the harness' MMLU prompt: its description line, the question, lettered options
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral\n"
        "A. paralysis of the facial muscles.\nB. paralysis of the facial muscles and loss of taste.\n"
        "C. paralysis of the facial muscles, loss of taste and lacrimation.\n"
        "D. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\nAnswer:")
    assert first.answer == " A" and first.id == "anatomy/0"
    ck = qa_data.load("mmlu_clinical_knowledge", data_path("mmlu_medical", "clinical_knowledge_test.csv"))[0]
    assert ck.prompt.startswith("The following are multiple choice questions (with answers) about clinical knowledge.")


def test_mmlu_csv_quoting_and_errors(tmp_path):
    p = tmp_path / "anatomy_test.csv"
    p.write_text('"A ""quoted"", two-line\nquestion  ",x,"y, z",w,"v\nw",D\n')
    e = qa_data.load("mmlu_anatomy", str(p))[0]
    assert e.prompt.endswith('about anatomy.\n\nA "quoted", two-line\nquestion\nA. x\nB. y, z\nC. w\nD. v\nw\nAnswer:')
    assert e.gold == 3
    p.write_text("q,a,b,c,d,A\nq,a,b,c,d,e,B\n")
    with pytest.raises(qa_data.QAFormatError, match=r"anatomy_test.csv:row 2 \(ending on line 2\): 7 fields, expected 6"):
        qa_data.load("mmlu_anatomy", str(p))
    p.write_text('"q\n\n",a,b,c,d,A\nq,a,b,c,d,E\n')
    with pytest.raises(qa_data.QAFormatError, match=r"anatomy_test.csv:row 2 \(ending on line 4\): field 'answer': 'E' "
                                                    "is not one of the listed letters"):
        qa_data.load("mmlu_anatomy", str(p))
    p.write_text("q,a,b,c,d,a\n")
    with pytest.raises(qa_data.QAFormatError, match="row 1 .*field 'answer': 'a'"):
        qa_data.load("mmlu_anatomy", str(p))


def test_five_option_medqa(tmp_path):
    rec = {**US, "options": {**US["options"], "E": "e"}, "answer_idx": "E", "answer": "e"}
    e = qa_data.load("usmle", write_lines(tmp_path, "5.jsonl", [rec]))[0]
    assert e.choices == [" A", " B", " C", " D", " E"] and e.gold == 4
    assert e.prompt == "Question: q?\nA. a\nB. b\nC. c\nD. d\nE. e\nAnswer:"


def test_bench_groups():
    assert qa_data.expand_benches("all") == ["pubmedqa", "medmcqa", "usmle", "mmlu_anatomy", "mmlu_clinical_knowledge",
                                             "mmlu_college_biology", "mmlu_college_medicine", "mmlu_medical_genetics",
                                             "mmlu_professional_medicine"]
    assert qa_data.expand_benches("mmlu_anatomy, pubmedqa,mmlu") == ["mmlu_anatomy", "pubmedqa"] + [
        f"mmlu_{s}" for s in MMLU_COUNTS if s != "anatomy"]
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu_astrology'"):
        qa_data.expand_benches("pubmedqa,mmlu_astrology")


def test_few_shot_layout_states_the_description_once():
    shots = [qa_data.QAExample(str(i), f"D\n\nQ{i}\nAnswer:", [" A", " B"], i % 2, description="D\n\n")
             for i in range(2)]
    q = qa_data.QAExample("q", "D\n\nQ\nAnswer:", [" A", " B"], 0, description="D\n\n")
    assert qa_data.render(q, shots) == "D\n\nQ0\nAnswer: A\n\nQ1\nAnswer: B\n\nQ\nAnswer:"
    assert qa_data.render(q) == q.prompt


def test_mmlu_all_57_subjects_load_with_the_published_counts():
    """MMLU's test split: 14,042 questions; the harness' categories hold 3,153 (STEM), 4,705 (humanities), 3,077
    (social sciences) and 3,107 (other) of them (lm-evaluation-harness' mmlu group sizes)."""
    sizes = {cat: sum(len(qa_data.load(f"mmlu_{s}", data_path("mmlu", f"{s}_test.csv"))) for s in subjects)
             for cat, subjects in qa_data.MMLU_CATEGORIES.items()}
    assert sizes == {"stem": 3153, "humanities": 4705, "social_sciences": 3077, "other": 3107}
