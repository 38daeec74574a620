"""
Outside CI: lm-evaluation-harness itself on general-domain tasks, from the local files: all 57 MMLU subjects (its
`mmlu` group) and `wikitext` (WikiText-2 raw test, one document per article, rolling log-likelihood). Same venv and
fp32 HF folder as lm_eval_tasks.py (see its docstring for how both are made):

    /work/refs/lmeval-venv/bin/python tests/refs/lm_eval_general.py --data_root=../shared/data --out=/work/refs/tasks_general
    export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    /work/refs/lmeval-venv/bin/lm_eval run --model hf --model_args pretrained=/work/refs/smollm2_hf,dtype=float32,max_length=2048 \
        --device cpu --batch_size 1 --num_fewshot 0 --include_path /work/refs/tasks_general --tasks wikitext \
        --log_samples --output_path /work/refs/harness_general/wikitext
    /work/refs/lmeval-venv/bin/lm_eval run --model hf --model_args pretrained=/work/refs/smollm2_hf,dtype=float32 \
        --device cpu --batch_size 16 --num_fewshot 0 --include_path /work/refs/tasks_general --tasks mmlu \
        --log_samples --output_path /work/refs/harness_general/mmlu

Then `lm_eval_general.py --golden tests/golden/lm_eval_smollm2.json /work/refs/harness_general "<command>"` adds the
first 5 questions of four MMLU subjects and two WikiText pages to CI's golden file (tests/test_lm_eval_golden.py).

Each YAML keeps the harness' task name and `include:`s its own YAML, so `--include_path` replaces the built-in task of
that name (and the mmlu_*_tasks tags, so the `mmlu` group and its four subgroups resolve to these 57 tasks). Template,
metrics, wikitext's detokenizer and rolling windows are untouched; only the data source changes: a local JSON Lines
file in the hub dataset's field layout, row order kept. MMLU rows come from the original release CSVs (../mmlu, the
same converter as lm_eval_tasks.mmlu); wikitext reads ../general/wikitext2_test_raw/wikitext-test-pages.jsonl as it
is (field `page`, 62 pages; see that folder's PROVENANCE.md section 5). Splits that are not local are unset (the
harness builds them eagerly). Standard library only, run by the harness venv's Python.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lm_eval_tasks import harness_yaml, mmlu, write  # noqa: E402

WIKITEXT_PAGES = os.path.join("general", "wikitext2_test_raw", "wikitext-test-pages.jsonl")


def mmlu_subjects(src):
    """The 57 subjects: the local CSVs, which must match the harness' own mmlu_<subject> YAMLs one for one."""
    ours = sorted(f[: -len("_test.csv")] for f in os.listdir(os.path.join(src, "mmlu")) if f.endswith("_test.csv"))
    theirs = os.listdir(os.path.dirname(harness_yaml("mmlu_anatomy")))
    theirs = sorted(f[len("mmlu_"): -len(".yaml")] for f in theirs if f.startswith("mmlu_") and f.endswith(".yaml"))
    assert ours == theirs and len(ours) == 57, (set(ours) ^ set(theirs), len(ours))
    return ours


def wikitext_pages(src):
    """EleutherAI/wikitext_document_level, wikitext-2-raw-v1 (test): one {"page": text} per article, used as is."""
    path = os.path.abspath(os.path.join(src, WIKITEXT_PAGES))
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert all(list(r) == ["page"] and r["page"] for r in rows), path
    return path, rows


def own_yaml(task):
    """The harness' own YAML of a task (lm_eval_tasks.harness_yaml, plus wikitext)."""
    if task == "wikitext":
        return os.path.normpath(os.path.join(os.path.dirname(harness_yaml("mmlu_anatomy")), "..", "..", "wikitext",
                                             "wikitext.yaml"))
    return harness_yaml(task)


def task_yaml(task, split, data, unset):
    return (f"# lm_eval's own task, read from local files: only the data source changes\n"
            f"include: {own_yaml(task)}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n{unset}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(os.path.join(a.out, "data"), exist_ok=True)
    n = 0
    for s in mmlu_subjects(a.data_root):
        task = f"mmlu_{s}"
        split, rows = mmlu(a.data_root, s, folder="mmlu")  # all 57 subjects: the six medical ones byte-identical
        data = os.path.abspath(os.path.join(a.out, "data", f"{task}_{split}.jsonl"))
        write(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write(os.path.join(a.out, f"{task}.yaml"), task_yaml(task, split, data, "fewshot_split: null\n"))
        n += len(rows)
    print(f"mmlu: 57 subjects, {n} documents -> {a.out}")
    data, rows = wikitext_pages(a.data_root)
    write(os.path.join(a.out, "wikitext.yaml"),
          task_yaml("wikitext", "test", data, "training_split: null\nvalidation_split: null\n"))
    print(f"wikitext: {len(rows)} pages -> {data}")


GOLDEN_MMLU = ("abstract_algebra", "high_school_european_history", "moral_scenarios", "sociology")  # 4 categories
GOLDEN_PAGES = (29, 15)  # 272 tokens in one window; 2,196 tokens in two (max_length 2048)


def add_to_golden(golden, samples, command):
    """Grow tests/golden/lm_eval_smollm2.json from the harness' --log_samples files: the first 5 questions of a few
    MMLU subjects (as the medical ones are kept) and two WikiText pages (the scored text, its log-likelihood, words
    and bytes)."""
    import glob
    g = json.load(open(golden))
    files = glob.glob(os.path.join(samples, "**", "samples_*.jsonl"), recursive=True)
    for s in GOLDEN_MMLU:
        f = next(f for f in files if os.path.basename(f).startswith(f"samples_mmlu_{s}_"))
        rows = [json.loads(l) for l in open(f)][:5]
        g["tasks"][f"mmlu_{s}"] = [{
            "doc_index": int(r["doc_id"]), "id": None, "context": r["arguments"]["gen_args_0"]["arg_0"],
            "continuations": [a["arg_1"] for a in r["arguments"].values()],
            "loglik": [float(x[0][0]) for x in r["resps"]], "is_greedy": [x[0][1] in (True, "True") for x in r["resps"]],
            "target": int(r["target"])} for r in rows]
    f = next(f for f in files if os.path.basename(f).startswith("samples_wikitext_"))
    pages = {int(r["doc_id"]): r for r in map(json.loads, open(f))}
    g["wikitext"] = {"command": command, "max_length": 2048, "pages": [
        {"doc_index": i, "text": pages[i]["target"], "loglik": float(pages[i]["word_perplexity"][0]),
         "words": int(pages[i]["word_perplexity"][1]), "bytes": int(pages[i]["byte_perplexity"][1])}
        for i in GOLDEN_PAGES]}
    with open(golden + ".tmp", "w") as out:
        json.dump(g, out, indent=1, ensure_ascii=False)
    os.replace(golden + ".tmp", golden)
    print(f"{golden}: + {len(GOLDEN_MMLU)} MMLU subjects x 5 questions, {len(GOLDEN_PAGES)} WikiText pages")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--golden":  # --golden GOLDEN_JSON SAMPLES_FOLDER "COMMAND"
        add_to_golden(*sys.argv[2:5])
    else:
        main()
