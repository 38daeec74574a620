"""
Outside CI: lm-evaluation-harness itself on the nine tasks, from the local files, to check eval_qa.py against it.
The harness lives in its own venv, never a dependency of this repository:

    python3 -m venv /work/refs/lmeval-venv
    /work/refs/lmeval-venv/bin/pip install torch==2.13.0 "lm_eval[hf]==0.4.13"
    /work/refs/lmeval-venv/bin/python tests/refs/lm_eval_tasks.py --data_root=../shared/data --out=/work/refs/tasks
    # an fp32 HF folder of the model (our export: its tokenizer.json is the GGUF's vocabulary, no BOS added)
    python -c "import torch, weights as w; g = w.find_smollm2_gguf(); m = w.load_model(g, dtype=torch.float32); \
               w.save_hf(m.state_dict(), m.args, '/work/refs/smollm2_hf', dtype=torch.float32, tokenizer=g)"
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 /work/refs/lmeval-venv/bin/lm_eval run --model hf \
        --model_args pretrained=/work/refs/smollm2_hf,dtype=float32 --device cpu --batch_size 16 --num_fewshot 0 \
        --include_path /work/refs/tasks --tasks medmcqa --log_samples --output_path /work/refs/harness
    python eval_qa.py --bench=medmcqa --init_from=<the GGUF> --data_root=../shared/data --dtype=float32 --out=out/ours
    python tests/refs/compare_lm_eval.py --ours out/ours/predictions.jsonl --harness /work/refs/harness

Each task YAML written here `include:`s the harness' own YAML (template, choices, target, metrics untouched) and
changes only where the documents come from: the HF hub dataset becomes a local JSON Lines file in that dataset's field
layout, converted from the official release files, row order kept. The few-shot source splits, not local and unused at
zero-shot, are unset (the harness builds them eagerly). Standard library only, run by the harness venv's Python.
"""
import argparse
import csv
import json
import os

MMLU = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
        "professional_medicine")


def medqa_4options(src):
    """GBaker/MedQA-USMLE-4-options-hf (test): sent1 = question, sent2 = "", ending0..3 = options A..D, label 0-based
    (the raw file: answer_idx A..D)."""
    rows = []
    for i, line in enumerate(open(os.path.join(src, "medqa_usmle", "phrases_no_exclude_test.jsonl"))):
        r = json.loads(line)
        assert list(r["options"]) == ["A", "B", "C", "D"], (i, r["options"])
        rows.append({"id": f"test-{i:05d}", "sent1": r["question"], "sent2": "",
                     **{f"ending{j}": r["options"][k] for j, k in enumerate("ABCD")},
                     "label": "ABCD".index(r["answer_idx"])})
    return "test", rows


def medmcqa(src):
    """openlifescienceai/medmcqa (validation): the raw fields, cop 0-based (the raw dev.json's is 1-based)."""
    rows = [json.loads(line) for line in open(os.path.join(src, "medmcqa", "dev.json"))]
    assert all(r["cop"] in (1, 2, 3, 4) for r in rows)
    return "validation", [{**r, "cop": r["cop"] - 1} for r in rows]


def pubmedqa(src):
    """bigbio/pubmed_qa, pubmed_qa_labeled_fold0_source (test): QUESTION_ID = PMID + the raw record, test_set.json's
    order (the 500 PQA-L test ids)."""
    data = json.load(open(os.path.join(src, "pubmedqa", "test_set.json")))
    return "test", [{"QUESTION_ID": pmid, **r} for pmid, r in data.items()]


def mmlu(src, subject, folder="mmlu_medical"):
    """cais/mmlu, config <subject> (test): question, subject, choices [A..D], answer 0-based."""
    rows = []
    with open(os.path.join(src, folder, f"{subject}_test.csv"), newline="") as f:
        for n, rec in enumerate(csv.reader(f), 1):
            assert len(rec) == 6 and rec[5] in ("A", "B", "C", "D"), (subject, n)
            rows.append({"question": rec[0], "subject": subject, "choices": rec[1:5], "answer": "ABCD".index(rec[5])})
    return "test", rows


def harness_yaml(task):
    """The harness' own YAML of a task, inside the installed lm_eval package."""
    import lm_eval
    tasks = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    if task.startswith("mmlu_"):
        return os.path.join(tasks, "mmlu", "default", f"{task}.yaml")
    return os.path.join(tasks, {"medqa_4options": "medqa/medqa.yaml", "medmcqa": "medmcqa/medmcqa.yaml",
                                "pubmedqa": "pubmedqa/pubmedqa.yaml"}[task])


def write(path, text):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(os.path.join(a.out, "data"), exist_ok=True)
    tasks = {"medqa_4options": medqa_4options, "medmcqa": medmcqa, "pubmedqa": pubmedqa} | {
        f"mmlu_{s}": (lambda src, s=s: mmlu(src, s)) for s in MMLU}
    for task, convert in tasks.items():
        split, rows = convert(a.data_root)
        data = os.path.abspath(os.path.join(a.out, "data", f"{task}_{split}.jsonl"))
        write(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        unset = ("fewshot_split: null\n" if task.startswith("mmlu_") else
                 "training_split: null\n" + ("" if task == "medmcqa" else "validation_split: null\n"))
        write(os.path.join(a.out, f"{task}.yaml"),
              f"# lm_eval's own task, read from local files: only the data source changes\n"
              f"include: {harness_yaml(task)}\ndataset_path: json\ndataset_name: null\n"
              f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n{unset}")
        print(f"{task}: {len(rows)} documents -> {data}")


if __name__ == "__main__":
    main()
