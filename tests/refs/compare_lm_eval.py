"""Compare nanoPMC's eval_qa.py predictions with lm-evaluation-harness' own per-question output, task by task.

    python tests/refs/compare_lm_eval.py --ours out/eval/predictions.jsonl --harness /work/refs/lm_eval_full
    python tests/refs/compare_lm_eval.py --ours out/eval/predictions.jsonl --harness tests/golden/lm_eval_smollm2.json
    python tests/refs/compare_lm_eval.py --ours ... --harness ... --requests DIR  # prompts of ALL docs

--harness: lm_eval --log_samples files (samples_<task>_*.jsonl; folders are searched recursively; where a task has
several files the one with the most documents wins), or the golden JSON (tests/golden/lm_eval_smollm2.json).
--requests: requests_<task>.jsonl, a dump of the harness' requests (its contexts, continuations and token ids for
every document, no model run): prompts and choices are then checked on every question, scores where samples exist.

Per task: prompts identical, continuations identical, predictions identical except exact ties (the top two choices
within --tie of each other, on either side), accuracy of each (4 digits, on the questions both scored), max
|loglik diff| and how many questions differ by more than --tol. Questions are matched by id where the harness document
carries ours (PubMedQA PMID, MedMCQA id), else by position (row i of our file = harness doc_id i).
Exit status 1 when any prompt or non-tie prediction differs, or an accuracy differs at 4 digits. Standard library only.
"""
import argparse
import glob
import json
import os
import re
import sys

HARNESS_TASK = {"usmle": "medqa_4options"}  # our bench name -> the harness' task name (others are the same)


def harness_task(bench):
    return HARNESS_TASK.get(bench, bench)


def doc_key(task, doc):
    """The id our predictions carry for this harness document, if any."""
    if task == "pubmedqa":
        return doc.get("QUESTION_ID")
    if task == "medmcqa":
        return doc.get("id")
    return None


def read_samples(path):
    """One samples_<task>_*.jsonl -> {doc_id: {key, context, continuations, loglik, target}}."""
    out = {}
    for line in open(path):
        s = json.loads(line)
        args = [s["arguments"][f"gen_args_{i}"] for i in range(len(s["arguments"]))]
        conts = [a["arg_1"] for a in args]
        t = s["target"]
        target = int(t) if re.fullmatch(r"\d+", str(t)) else [c.strip() for c in conts].index(t)
        out[s["doc_id"]] = {"key": doc_key(task_of(path), s["doc"]), "context": args[0]["arg_0"],
                            "contexts_agree": len({a["arg_0"] for a in args}) == 1, "continuations": conts,
                            "loglik": [float(r[0][0]) for r in s["resps"]], "target": target}
    return out


def task_of(path):
    return re.match(r"samples_(.+)_\d{4}-\d\d-\d\dT[\d\-.]+\.jsonl$", os.path.basename(path)).group(1)


ROLLING = ("wikitext",)  # loglikelihood_rolling tasks: one score per document, no choices


def read_rolling(path):
    """A rolling task's samples -> {doc_id: {text (the scored string), loglik, words, bytes}}."""
    out = {}
    for line in open(path):
        s = json.loads(line)
        ll, words = s["word_perplexity"]
        out[int(s["doc_id"])] = {"text": s["target"], "loglik": float(ll), "words": int(words),
                                 "bytes": int(s["byte_perplexity"][1])}
    return out


def compare_rolling(bench, ours, docs, tol):
    """Per document: words and bytes counted alike, |loglik diff| per token (mean and max); the three metrics of
    both to 4 significant digits."""
    import math
    pairs = [(o, docs[o["id"]]) for o in ours if o["id"] in docs]
    per_tok = [abs(o["loglikelihood"] - d["loglik"]) / o["tokens"] for o, d in pairs]
    def metrics(lls, words, nbytes):
        ll = sum(lls)
        return {"word_perplexity": math.exp(-ll / sum(words)), "byte_perplexity": math.exp(-ll / sum(nbytes)),
                "bits_per_byte": -ll / sum(nbytes) / math.log(2)}
    m_ours = metrics([o["loglikelihood"] for o, _ in pairs], [o["words"] for o, _ in pairs], [o["bytes"] for o, _ in pairs])
    m_harn = metrics([d["loglik"] for _, d in pairs], [d["words"] for _, d in pairs], [d["bytes"] for _, d in pairs])
    sig = lambda x: float(f"{x:.4g}")  # noqa: E731
    r = {"bench": bench, "task": bench, "n_ours": len(ours), "n_pairs": len(pairs),
         "counts_diff": [o["id"] for o, d in pairs if (o["words"], o["bytes"]) != (d["words"], d["bytes"])],
         "mean_abs_diff_per_token": sum(per_tok) / max(len(per_tok), 1), "max_abs_diff_per_token": max(per_tok),
         "max_abs_diff_doc": max(abs(o["loglikelihood"] - d["loglik"]) for o, d in pairs),
         "ours": m_ours, "harness": m_harn}
    r["ok"] = (len(pairs) == len(docs) == len(ours) and not r["counts_diff"] and r["mean_abs_diff_per_token"] <= tol
               and all(sig(m_ours[k]) == sig(m_harn[k]) for k in m_ours))
    return r


def load_harness(paths):
    tasks = {}
    for p in paths:
        if p.endswith(".json"):  # the golden file
            for task, rows in json.load(open(p))["tasks"].items():
                tasks[task] = {r["doc_index"]: {**r, "key": r.get("id"), "contexts_agree": True} for r in rows}
            continue
        files = glob.glob(os.path.join(p, "**", "samples_*.jsonl"), recursive=True) if os.path.isdir(p) else [p]
        for f in sorted(files):
            t = task_of(f)
            docs = read_rolling(f) if t in ROLLING else read_samples(f)
            if len(docs) > len(tasks.get(t, {})):
                tasks[t] = docs
    return tasks


def load_requests(folder):
    tasks = {}
    for f in glob.glob(os.path.join(folder, "requests_*.jsonl")):
        rows = [json.loads(l) for l in open(f)]
        task = os.path.basename(f)[len("requests_"):-len(".jsonl")]
        tasks[task] = {r["doc_index"]: {**r, "key": r["id"]} for r in rows}
    return tasks


def match(ours, docs):
    """Pair our rows with harness documents: by id where the harness documents carry one (PubMedQA, MedMCQA; ours
    without a counterpart stay unpaired), else by position."""
    keys = {d["key"]: i for i, d in docs.items() if d.get("key") is not None}
    if keys:
        return [(r, keys[r["id"]]) for r in ours if r["id"] in keys], "id"
    return [(r, i) for i, r in enumerate(ours)], "position"


def argmax(xs):
    return max(range(len(xs)), key=xs.__getitem__)


def is_tie(xs, tie):
    top = sorted(xs, reverse=True)
    return len(top) > 1 and top[0] - top[1] <= tie


def token_ids_diff(have, reqs, encode):
    """Ids of questions whose token ids (context; each continuation) differ between our tokenizer and the harness'."""
    bad = []
    for o, i in have:
        ctx = encode(o["prompt"])
        conts = [encode(o["prompt"] + c)[len(ctx):] for c in o["choices"]]
        if ctx != reqs[i]["context_enc"] or conts != reqs[i]["continuation_enc"]:
            bad.append(o["id"])
    return bad


def compare_task(bench, ours, docs, reqs, tol, tie, encode=None):
    task = harness_task(bench)
    r = {"bench": bench, "task": task, "n_ours": len(ours)}
    src = reqs or docs  # prompts: every document from the request dump, else the scored samples
    pairs, r["matched_by"] = match(ours, src)
    have = [(o, i) for o, i in pairs if i in src]
    r["n_prompts_checked"] = len(have)
    r["prompt_diff"] = [o["id"] for o, i in have if o["prompt"] != src[i]["context"]]
    r["choice_diff"] = [o["id"] for o, i in have if o["choices"] != src[i]["continuations"]]
    if reqs and encode:
        r["token_ids_diff"] = token_ids_diff(have, reqs, encode)
    pairs = match(ours, docs)[0] if docs else []
    scored = [(o, docs[i]) for o, i in pairs if i in docs and o.get("scores") is not None]
    r["n_scored"] = len(scored)
    diffs = [max(abs(a - b) for a, b in zip(o["scores"], d["loglik"])) for o, d in scored]
    r["max_abs_diff"] = max(diffs, default=None)
    r["n_diff_gt_tol"] = sum(x > tol for x in diffs)
    r["diff_gt_tol"] = sorted(((round(x, 6), o["id"]) for x, (o, _) in zip(diffs, scored) if x > tol), reverse=True)
    if "token_ids_diff" in r:  # is every larger difference explained by different token ids?
        r["diff_gt_tol_same_tokens"] = [i for _, i in r["diff_gt_tol"] if i not in set(r["token_ids_diff"])]
    def tied(o, d):
        return is_tie(o["scores"], tie) or is_tie(d["loglik"], tie)
    pred_diff = [(o, d) for o, d in scored if argmax(o["scores"]) != argmax(d["loglik"])]
    r["n_ties"] = sum(tied(o, d) for o, d in pred_diff)
    r["pred_diff_not_tie"] = [o["id"] for o, d in pred_diff if not tied(o, d)]
    r["gold_diff"] = [o["id"] for o, d in scored if o["gold"] != d["target"]]
    n = len(scored)
    r["acc_ours"] = round(sum(argmax(o["scores"]) == o["gold"] for o, _ in scored) / n, 4) if n else None
    r["acc_harness"] = round(sum(argmax(d["loglik"]) == d["target"] for _, d in scored) / n, 4) if n else None
    r["ok"] = r["n_prompts_checked"] > 0 and not (
        r["prompt_diff"] or r["choice_diff"] or r["pred_diff_not_tie"] or r["gold_diff"]
        or r["acc_ours"] != r["acc_harness"] or not all(d["contexts_agree"] for _, d in scored))
    return r


def fmt_acc(x):
    return "-" if x is None else f"{x:.4f}"


def report(rows, tol, tie):
    print(f"| bench | harness task | matched by | prompts identical | continuations identical | scored | "
          f"predictions identical (ties <= {tie:g}) | acc ours | acc harness | max abs loglik diff | diff > {tol:g} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["n_prompts_checked"]
        mx = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        print(f"| {r['bench']} | {r['task']} | {r['matched_by']} | {p - len(r['prompt_diff'])}/{p} | "
              f"{p - len(r['choice_diff'])}/{p} | {r['n_scored']}/{r['n_ours']} | "
              f"{r['n_scored'] - len(r['pred_diff_not_tie'])}/{r['n_scored']} ({r['n_ties']} ties) | "
              f"{fmt_acc(r['acc_ours'])} | {fmt_acc(r['acc_harness'])} | {mx} | {r['n_diff_gt_tol']} |")
    for r in rows:
        for k in ("prompt_diff", "choice_diff", "token_ids_diff", "pred_diff_not_tie", "gold_diff", "diff_gt_tol",
                  "diff_gt_tol_same_tokens"):
            if r.get(k):
                print(f"{r['bench']}: {k} ({len(r[k])}): {r[k][:10]}{' ...' if len(r[k]) > 10 else ''}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", required=True, help="eval_qa.py's predictions.jsonl")
    ap.add_argument("--harness", nargs="+", default=[], help="samples_*.jsonl files/folders, or the golden JSON")
    ap.add_argument("--requests", help="folder of requests_<task>.jsonl (all documents' prompts, no scores)")
    ap.add_argument("--tol", type=float, default=1e-4, help="per-choice log-likelihood tolerance")
    ap.add_argument("--tie", type=float, default=1e-5, help="two choices this close are an exact tie")
    ap.add_argument("--json", help="also write the comparison here")
    ap.add_argument("--our_tokenizer", help="with --requests: a tokenizer path (the GGUF) for nanoPMC's Tokenizer, to "
                    "check token ids against the harness' (run in nanoPMC's venv)")
    ap.add_argument("--repo", default="/work/main", help="nanoPMC checkout, for --our_tokenizer")
    a = ap.parse_args(argv)
    ours = {}
    for line in open(a.ours):
        row = json.loads(line)
        ours.setdefault(row["bench"], []).append(row)
    harness = load_harness(a.harness)
    requests = load_requests(a.requests) if a.requests else {}
    encode = None
    if a.our_tokenizer:
        sys.path.insert(0, a.repo)
        from tokenizer import Tokenizer
        encode = Tokenizer(a.our_tokenizer).encode
    rows, rolling = [], []
    for bench, rs in ours.items():
        t = harness_task(bench)
        if t not in harness and t not in requests:
            print(f"{bench}: no harness output for task {t}; skipped", file=sys.stderr)
            continue
        if t in ROLLING:
            rolling.append(compare_rolling(bench, rs, harness[t], a.tol))
            continue
        rows.append(compare_task(bench, rs, harness.get(t, {}), requests.get(t), a.tol, a.tie, encode))
    report(rows, a.tol, a.tie)
    for r in rolling:
        print(f"{r['bench']}: {r['n_pairs']} documents, words/bytes differ in {len(r['counts_diff'])}; |loglik diff| "
              f"per token mean {r['mean_abs_diff_per_token']:.2e}, max {r['max_abs_diff_per_token']:.2e} (largest per "
              f"document {r['max_abs_diff_doc']:.2e}); ours {r['ours']}; harness {r['harness']}; ok {r['ok']}")
    rows += rolling
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
