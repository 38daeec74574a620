"""
Medical QA accuracy: PMC-LLaMA's Table 1 (PubMedQA, MedMCQA, USMLE) and the six medical subjects of MMLU, the nine
tasks of the field's benchmark suite (MultiMedQA, the Open Medical-LLM Leaderboard).

    python eval_qa.py --bench medmcqa --init_from=out/pmc_llama_7b/hf
    python eval_qa.py --bench=all --init_from=HF_OR_GGUF_OR_CKPT                       # the nine, one model load
    python eval_qa.py --bench=pubmedqa,mmlu --init_from=HF_OR_CKPT --lora=out/ft_id/adapter --out=out/eval
    python eval_qa.py --bench usmle --data=path/to/phrases_no_exclude_test.jsonl --method=generate

--method=loglik (default) is lm-evaluation-harness' scoring: for a choice c, context = encode(BOS + prompt) and the
continuation is encode(BOS + prompt + c) after it; the score is the sum of the continuation's log-probabilities.
BOS follows the tokenizer's own convention (LLaMA-1/2 and Llama-3 start with it, SmolLM2 does not); --add_bos=True
or False forces it (the harness' HF models default to add_bos_token=False, i.e. no BOS, unless told otherwise).
acc takes the argmax score, acc_norm the argmax of score / the characters of c without the harness' target delimiter
(" yes" counts 3, as the harness counts its choice "yes"). When every choice is one token
(" A".." D", " yes"/" no"/" maybe" with the LLaMA tokenizer) a single forward pass over the prompt scores them all;
otherwise the prompt is run once into the KV cache and each choice continues from it.
--method=generate is PMC-LLaMA's way: greedy decoding, then a regex picks the answer; no match is `no_answer`.

Prints a table (n, acc with its 95% Wilson interval, acc_norm per task; MMLU-medical pooled over its 1,089 questions;
the unweighted mean of the tasks' accuracies) and writes it to DIR/results.md and DIR/results.json, beside
DIR/predictions.jsonl (one line per question).
"""
import hashlib
import json
import math
import os
import re
import sys
import time
from collections import defaultdict

import torch
from tqdm import tqdm

import qa_data
from configurator import configure, require
from lora import load_adapter, merge_lora
from tokenizer import TOKENIZER_PATHS, Tokenizer
from weights import MODEL_PATHS, load_model

bench = "pubmedqa"  # comma-separated: pubmedqa, medmcqa, usmle, mmlu_<subject>; 'mmlu' (the six), 'all' (the nine)
data = ""  # the benchmark file (with a single --bench); default: the official test split under data_root
data_root = "data"  # where the default files live: pubmedqa/, medmcqa/, medqa_usmle/, mmlu_medical/ (DEFAULT_FILES)
init_from = ""  # HF folder or train.py checkpoint
lora = ""  # adapter folder (ours or PEFT's), applied on top of init_from
tokenizer = ""  # default: the tokenizer inside init_from (tokenizer.json / tokenizer.model, or the .gguf itself)
add_bos = None  # None: the tokenizer's convention (tok.add_bos); True/False: force BOS on or off
method = "loglik"  # 'loglik' | 'generate'
shots = 0  # K fixed solved examples from the train split, prepended
shots_data = ""  # the train file for --shots (default: under data_root; PubMedQA uses its non-test ids)
medmcqa_cop_base = 1  # 1: raw release (dev.json); 0: the Hugging Face copy
split = "test"  # PubMedQA PQA-L: 'test' (the official 500 ids) or 'train' (the other 500: a validation slice)
select = ""  # 'a:b': questions a..b-1 of the split (e.g. --split=train --select=400:500 to choose hyper-parameters)
limit = 0  # first N questions only
batch_size = 16
max_new_tokens = 16  # --method=generate
compile = False  # --method=generate: torch.compile the decoding steps (one graph for every question)
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
device = "cuda" if torch.cuda.is_available() else "cpu"
out = "out/eval"

DEFAULT_FILES = {  # the official evaluation splits, as the paper reports them
    "pubmedqa": ("pubmedqa/ori_pqal.json", "the 500 ids of test_ground_truth.json"),
    "medmcqa": ("medmcqa/dev.json", "the dev set, reported as test"),
    "usmle": ("medqa_usmle/phrases_no_exclude_test.jsonl", "the 1,273-question 4-option test file"),
} | {f"mmlu_{s}": (f"mmlu_medical/{s}_test.csv", f"MMLU's data/test/{s}_test.csv from "
                   "https://people.eecs.berkeley.edu/~hendrycks/data.tar") for s in qa_data.MMLU_SUBJECTS}
DEFAULT_SHOTS = {"medmcqa": "medmcqa/train.json",
                 "usmle": "medqa_usmle/phrases_no_exclude_train.jsonl"
                 } | {f"mmlu_{s}": f"mmlu_medical/{s}_dev.csv" for s in qa_data.MMLU_SUBJECTS}  # the harness' shots
ANSWER_RE = {
    "pubmedqa": re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE),
    "mcq": re.compile(r"(?:^|[^A-Za-z])([A-Z])(?:$|[^A-Za-z])"),
}


# -----------------------------------------------------------------------------
# tokenising (prompt, choice) pairs the harness' way

def encode_pair(tok, prompt, choice, bos=True):
    """-> (context ids, with BOS if bos, continuation ids). Trailing spaces of the prompt move to the choice, as
    the harness does, so the continuation always starts a new piece."""
    n = len(prompt) - len(prompt.rstrip(" "))
    if n:
        prompt, choice = prompt[:-n], prompt[-n:] + choice
    ctx, cont = qa_data.continuation_tokens(tok.encode, prompt, choice)
    return ([tok.bos_id] if bos else []) + ctx, cont


def fit_to_context(ctx, conts, max_len, keep=1):
    """Drop the oldest prompt tokens (after the first `keep`: BOS) so that prompt + the longest continuation
    fits; -> (ctx, cut?)."""
    over = len(ctx) + max(len(c) for c in conts) - 1 - max_len
    return (ctx[:keep] + ctx[keep + over:], True) if over > 0 else (ctx, False)


def encode_items(tok, prompts, examples, max_len, bos=None):
    """-> ([(context ids, [continuation ids of each choice])] per question, how many prompts were cut to fit).
    bos None: the tokenizer's own convention (tok.add_bos)."""
    bos = tok.add_bos if bos is None else bos
    if bos and tok.bos_id is None:
        raise SystemExit(f"add_bos=True, but the tokenizer {tok.path} has no BOS token")
    items, truncated = [], 0
    for p, ex in zip(prompts, examples):
        pairs = [encode_pair(tok, p, ch, bos) for ch in ex.choices]
        ctx, cut = fit_to_context(pairs[0][0], [cont for _, cont in pairs], max_len, keep=int(bos))
        items.append((ctx, [cont for _, cont in pairs]))
        truncated += cut
    return items, truncated


# -----------------------------------------------------------------------------
# scoring

def _logprobs(model, h):
    return torch.log_softmax(model.lm_head(h).float(), dim=-1)


@torch.inference_mode()
def score_one_pass(model, items, batch_size, device, progress=True):
    """items: (ctx, [one-token continuations]). One forward per question, batched, right-padded; only the last
    prompt position goes through lm_head."""
    scores = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))  # similar lengths together: little padding
    for b in tqdm(range(0, len(order), batch_size), disable=not progress or not items, desc="questions",
                  unit_scale=batch_size):
        rows = order[b:b + batch_size]
        T = len(items[rows[0]][0])
        x = torch.zeros(len(rows), T, dtype=torch.long)
        for j, i in enumerate(rows):
            x[j, :len(items[i][0])] = torch.tensor(items[i][0])
        h = model.hidden(x.to(device))
        last = torch.tensor([len(items[i][0]) - 1 for i in rows], device=device)
        lp = _logprobs(model, h[torch.arange(len(rows), device=device), last])
        for j, i in enumerate(rows):
            scores[i] = [lp[j, c[0]].item() for c in items[i][1]]
    return scores


@torch.inference_mode()
def score_shared_prompt(model, ctx, conts, device):
    """Any continuations: the prompt runs once into the KV cache, each choice continues from it."""
    model.setup_cache(1, len(ctx) + max(len(c) for c in conts) - 1, device=device)
    try:
        h = model.hidden(torch.tensor([ctx], device=device))
        first = _logprobs(model, h[0, -1])
        out = []
        for c in conts:
            s = first[c[0]].item()
            if len(c) > 1:  # positions len(ctx) .. predict c[1:]; the cached prompt is never overwritten
                hc = model.hidden(torch.tensor([c[:-1]], device=device), start_pos=len(ctx))
                lp = _logprobs(model, hc[0])
                s += lp[torch.arange(len(c) - 1, device=device), torch.tensor(c[1:], device=device)].sum().item()
            out.append(s)
        return out
    finally:
        model.clear_cache()


@torch.inference_mode()
def score_naive(model, ctx, conts, device):
    """The harness' per-pair loop: one full forward over prompt + choice for every (question, choice)."""
    out = []
    for c in conts:
        x = torch.tensor([ctx + c[:-1]], device=device)
        lp = _logprobs(model, model.hidden(x)[0, len(ctx) - 1:])
        out.append(lp[torch.arange(len(c), device=device), torch.tensor(c, device=device)].sum().item())
    return out


def score_loglik(model, items, batch_size, device, progress=True, naive=False):
    """Scores of every (ctx, conts) item: one pass where all continuations are single tokens, else KV sharing."""
    if naive:
        return [score_naive(model, ctx, conts, device) for ctx, conts in tqdm(items, disable=not progress)]
    single = [i for i, (_, conts) in enumerate(items) if all(len(c) == 1 for c in conts)]
    scores = [None] * len(items)
    for i, s in zip(single, score_one_pass(model, [items[i] for i in single], batch_size, device, progress)):
        scores[i] = s
    multi = [i for i in range(len(items)) if scores[i] is None]
    for i in tqdm(multi, disable=not progress or not multi, desc="multi-token answers"):
        scores[i] = score_shared_prompt(model, *items[i], device)
    return scores


def extract_answer(bench, text, n_choices):
    """The first answer-looking token of a generation: yes/no/maybe, or a choice letter; None if there is none."""
    if bench == "pubmedqa":
        m = ANSWER_RE["pubmedqa"].search(text)
        return qa_data.PUBMEDQA_LABELS.index(m.group(1).lower()) if m else None
    m = ANSWER_RE["mcq"].search(text)
    return ord(m.group(1)) - ord("A") if m and ord(m.group(1)) - ord("A") < n_choices else None


@torch.inference_mode()
def generate_answers(model, tok, items, bench, examples, max_new_tokens, device, compile=False):
    preds, texts = [], []
    for (ctx, _), ex in tqdm(list(zip(items, examples)), desc="generate"):
        y = model.generate(torch.tensor([ctx], device=device), max_new_tokens, temperature=0.0, eos_id=tok.eos_id,
                           compile=compile)
        text = tok.decode([t for t in y[0, len(ctx):].tolist() if t != tok.eos_id])
        texts.append(text)
        preds.append(extract_answer(bench, text, len(ex.choices)))
    return preds, texts


# -----------------------------------------------------------------------------
# reporting

def wilson_ci(k, n, z=1.96):
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return [0.0, 0.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def group_accuracy(examples, correct, key):
    groups = defaultdict(lambda: [0, 0])
    for ex, ok in zip(examples, correct):
        g = groups[ex.info[key]]
        g[0] += 1
        g[1] += ok
    return {k: {"n": n, "acc": c / n} for k, (n, c) in sorted(groups.items())}


def resolve_data(c, b, single):
    path = c.data if (single and c.data) else os.path.join(c.data_root, DEFAULT_FILES[b][0])
    if not os.path.isfile(path):
        raise SystemExit(f"{b}: no data file {path} (default: {DEFAULT_FILES[b][0]} under --data_root, "
                         f"{DEFAULT_FILES[b][1]}; or pass --data=FILE in the official format)")
    return path


def few_shots(c, b, data_path):
    """The first --shots solved examples of the benchmark's train split (the harness' first_n sampler)."""
    if not c.shots:
        return []
    # PubMedQA's shots come from the non-test ids of the evaluated file itself
    path = c.shots_data or (data_path if b == "pubmedqa" else os.path.join(c.data_root, DEFAULT_SHOTS[b]))
    if not os.path.isfile(path):
        raise SystemExit(f"--shots={c.shots} for {b} needs its train split: no file {path} (--shots_data=FILE)")
    return qa_data.load(b, path, split="train", cop_base=c.medmcqa_cop_base)[:c.shots]


def evaluate_bench(model, tok, c, b, path):
    examples = qa_data.load(b, path, split=c.split, cop_base=c.medmcqa_cop_base, select=c.select)
    if c.limit:
        examples = examples[:c.limit]
    shots = few_shots(c, b, path)
    prompts = [qa_data.render(ex, shots) for ex in examples]
    items, truncated = encode_items(tok, prompts, examples, model.args.max_seq_len, bos=c.add_bos)
    t0 = time.perf_counter()
    scores, gens = None, None
    if c.method == "loglik":
        scores = score_loglik(model, items, c.batch_size, c.device)
        preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
        norm = [max(range(len(s)), key=lambda j: s[j] / len(ex.choices[j].removeprefix(" ")))
                for s, ex in zip(scores, examples)]
    elif c.method == "generate":
        preds, gens = generate_answers(model, tok, items, b, examples, c.max_new_tokens, c.device, c.compile)
        norm = None
    else:
        raise SystemExit(f"--method={c.method}: use loglik or generate")
    elapsed = time.perf_counter() - t0
    correct = [p == ex.gold for p, ex in zip(preds, examples)]
    n, k = len(examples), sum(correct)
    res = {"bench": b, "method": c.method, "n": n, "correct": k, "acc": k / max(n, 1), "acc_ci95": wilson_ci(k, n),
           "acc_norm": (sum(p == ex.gold for p, ex in zip(norm, examples)) / max(n, 1)) if norm else None,
           "no_answer": sum(p is None for p in preds), "truncated_prompts": truncated, "shots": c.shots,
           "model": c.init_from, "lora": c.lora or None, "data": os.path.abspath(path), "data_sha256": sha256_file(path),
           "elapsed_s": round(elapsed, 3), "questions_per_s": round(n / max(elapsed, 1e-9), 2)}
    if b == "medmcqa":
        res["per_subject"] = group_accuracy(examples, correct, "subject")
    if b == "usmle":
        res["per_meta_info"] = group_accuracy(examples, correct, "meta_info")
    rows = []
    for i, (ex, p, ok) in enumerate(zip(examples, preds, correct)):
        row = {"bench": b, "id": ex.id, "prompt": prompts[i], "choices": ex.choices,
               "scores": scores[i] if scores else None, "pred": p, "gold": ex.gold, "correct": ok}
        if gens is not None:
            row["generation"] = gens[i]
        rows.append(row)
    return res, rows


def load_for_eval(c):
    model = load_model(c.init_from, dtype=getattr(torch, c.dtype), device=c.device)
    if c.lora:
        load_adapter(model, c.lora)
        merge_lora(model)  # W + scale * B @ A once: inference then costs what the base model costs
    return model.eval()


def summarize(results):
    """Rows beyond the tasks: MMLU-medical pooled over its questions (a micro average, as one 1,089-question task)
    when several subjects ran, and the unweighted (macro) mean of the tasks' accuracies when several tasks ran."""
    rows = {}
    mmlu = [r for b, r in results.items() if b.startswith("mmlu_")]
    if len(mmlu) > 1:
        n, k = sum(r["n"] for r in mmlu), sum(r["correct"] for r in mmlu)
        norm = None if any(r["acc_norm"] is None for r in mmlu) else sum(r["acc_norm"] * r["n"] for r in mmlu) / n
        rows["mmlu_medical (pooled)"] = {"n": n, "acc": k / n, "acc_ci95": wilson_ci(k, n), "acc_norm": norm}
    if len(results) > 1:
        rs = list(results.values())
        norm = None if any(r["acc_norm"] is None for r in rs) else sum(r["acc_norm"] for r in rs) / len(rs)
        rows[f"mean of {len(rs)} tasks"] = {"n": sum(r["n"] for r in rs), "acc": sum(r["acc"] for r in rs) / len(rs),
                                            "acc_ci95": None, "acc_norm": norm}
    return rows


def table_lines(results, summary, markdown=False):
    """The results table, as console text or a markdown table."""
    head = ("task", "n", "acc", "95% CI", "acc_norm", "no_answer", "q/s")
    lines = []
    for name, r in list(results.items()) + list(summary.items()):
        ci = f"[{r['acc_ci95'][0]:.3f}, {r['acc_ci95'][1]:.3f}]" if r.get("acc_ci95") else "-"
        norm = f"{r['acc_norm']:.4f}" if r["acc_norm"] is not None else "-"
        lines.append((name, str(r["n"]), f"{r['acc']:.4f}", ci, norm, str(r.get("no_answer", "-")),
                      f"{r['questions_per_s']:.1f}" if "questions_per_s" in r else "-"))
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(l) + " |" for l in lines]
    w = [max(len(x) for x in col) for col in zip(head, *lines)]
    return [" ".join(x.ljust(w[0]) if j == 0 else x.rjust(w[j]) for j, x in enumerate(row)) for row in [head] + lines]


def write_atomic(path, text):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # a crash never leaves a half-written file under the final name


def write_results(c, results, summary, predictions):
    os.makedirs(c.out, exist_ok=True)
    write_atomic(os.path.join(c.out, "predictions.jsonl"), "".join(json.dumps(r) + "\n" for r in predictions))
    write_atomic(os.path.join(c.out, "results.json"),
                 json.dumps({"results": results, "summary": summary, "config": vars(c)}, indent=2))
    notes = (f"\nModel: `{c.init_from}`" + (f" + LoRA `{c.lora}`" if c.lora else "") + f"; {c.method}, {c.shots}-shot, "
             f"{c.dtype}. 95% CI: Wilson score interval of acc. mmlu_medical (pooled): the six subjects as one task "
             "(micro average). mean: the unweighted mean of the tasks' accuracies (macro).\n")
    write_atomic(os.path.join(c.out, "results.md"), "\n".join(table_lines(results, summary, markdown=True)) + "\n" + notes)


def main(argv=None):
    from types import SimpleNamespace
    c = SimpleNamespace(**configure(dict(globals()), argv))  # a copy: the defaults stay untouched
    benches = qa_data.expand_benches(c.bench)
    if not benches:
        raise SystemExit("--bench is empty: name one or several benchmarks, 'mmlu' or 'all'")
    require(c.init_from, "init_from", MODEL_PATHS)
    require(c.tokenizer or c.init_from, "tokenizer", TOKENIZER_PATHS)
    paths = {b: resolve_data(c, b, len(benches) == 1) for b in benches}
    model = load_for_eval(c)
    tok = Tokenizer(c.tokenizer or c.init_from)
    results, predictions = {}, []
    for b in benches:
        results[b], rows = evaluate_bench(model, tok, c, b, paths[b])
        predictions += rows
    summary = summarize(results)
    write_results(c, results, summary, predictions)
    print("\n".join(table_lines(results, summary)))
    print(f"wrote {os.path.join(c.out, 'results.md')}, results.json and predictions.jsonl", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
