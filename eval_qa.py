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

The general side, what continued pre-training may cost: --bench=mmlu_all is MMLU's 57 subjects as the harness'
default zero-shot mmlu_<subject> tasks (mmlu_stem, mmlu_humanities, mmlu_social_sciences, mmlu_other: one category),
reported per subject, per category and as the whole group, pooled over questions (the harness' group accuracy) and
as the mean of subjects; --bench=wikitext is the harness' wikitext task on WikiText-2's 62 test pages, and
--bench=ppl --data=... the same metrics on any held-out text (perplexity.py): word and byte perplexity, bits per
byte, by rolling windows of --max_length tokens (0: the model's context). Names combine in one model load:
--bench=all,mmlu_all,wikitext.

Prints a table (n, acc with its 95% Wilson interval, acc_norm per task; MMLU-medical pooled over its 1,089 questions;
the unweighted mean of the medical tasks' accuracies; the MMLU categories; the perplexities) and writes it to
DIR/results.md and DIR/results.json, beside DIR/predictions.jsonl (one line per question or document).
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

import perplexity
import qa_data
from configurator import configure, require
from lora import load_adapter, merge_lora
from tokenizer import TOKENIZER_PATHS, Tokenizer
from weights import MODEL_PATHS, load_model

bench = "pubmedqa"  # comma-separated: pubmedqa, medmcqa, usmle, mmlu_<subject>, wikitext, ppl; groups: 'mmlu' (the
# six medical subjects), 'all' (the nine medical tasks), 'mmlu_all' (57 subjects), mmlu_stem / _humanities / ...
data = ""  # the benchmark file (with a single --bench; --bench=ppl: a .txt folder, a .jsonl or a prepared corpus)
data_root = "data"  # where the default files live: pubmedqa/, medmcqa/, medqa_usmle/, mmlu/, general/ (DEFAULT_FILES)
text_field = "text"  # --bench=ppl on a JSON Lines file: the field holding each document
max_length = 0  # perplexity: tokens per rolling window (the harness' max_length); 0: the model's context length
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
limit = 0  # first N questions (perplexity: documents) only
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
    "wikitext": ("general/wikitext2_test_raw/wikitext-test-pages.jsonl", "WikiText-2's raw test split as its 62 pages"),
} | {f"mmlu_{s}": (f"mmlu/{s}_test.csv", f"MMLU's data/test/{s}_test.csv") for s in qa_data.MMLU_ALL}
PPL_BENCHES = ("wikitext", "ppl")  # perplexity.py's; the rest are qa_data's
DEFAULT_SHOTS = {"medmcqa": "medmcqa/train.json",
                 "usmle": "medqa_usmle/phrases_no_exclude_train.jsonl"
                 } | {f"mmlu_{s}": f"mmlu/{s}_dev.csv" for s in qa_data.MMLU_ALL}  # the harness' shots: MMLU's dev
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


@torch.inference_mode()
def score_windows(model, windows, batch_size, device, chunk=512, progress=True):
    """Sum of log p(target | inputs so far) over each (inputs, targets) window of equal length; batched by length,
    right-padded, lm_head and log_softmax a chunk of positions at a time (never a whole batch's logits)."""
    sums = [0.0] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    for b in tqdm(range(0, len(order), batch_size), disable=not progress or not windows, desc="windows",
                  unit_scale=batch_size):
        rows = order[b:b + batch_size]
        T = len(windows[rows[0]][0])
        x = torch.zeros(len(rows), T, dtype=torch.long)
        y = torch.full((len(rows), T), -100, dtype=torch.long)
        for j, i in enumerate(rows):
            inputs, targets = windows[i]
            x[j, :len(inputs)], y[j, :len(targets)] = torch.tensor(inputs), torch.tensor(targets)
        h, y = model.hidden(x.to(device)), y.to(device)
        total = torch.zeros(len(rows), dtype=torch.float64, device=device)
        for s in range(0, T, chunk):
            lp = _logprobs(model, h[:, s:s + chunk])
            t = y[:, s:s + chunk]
            total += (lp.gather(-1, t.clamp(min=0)[..., None])[..., 0] * (t != -100)).sum(1).double()
        for j, i in enumerate(rows):
            sums[i] = total[j].item()
    return sums


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
    if b == "ppl":  # the user's own held-out text: checked by perplexity.load_documents
        return c.data or require("", "data", "--bench=ppl scores your text: --data=a .txt folder, a .jsonl file or "
                                             "a prepare_corpus.py out_dir")
    path = c.data if (single and c.data) else os.path.join(c.data_root, DEFAULT_FILES[b][0])
    if not os.path.isfile(path):
        raise SystemExit(f"{b}: no data file {path} ({DEFAULT_FILES[b][1]}); fetch the benchmarks with: python "
                         f"download.py --benchmarks --data_root={c.data_root} (or pass --data=FILE, official format)")
    return path


def parse_benches(spec):
    """--bench -> the task names in order (QA tasks and perplexity benches); an unknown name is a one-line error."""
    names = []
    for b in (s.strip() for s in spec.split(",")):
        try:
            new = [b] if b in PPL_BENCHES else qa_data.expand_benches(b)
        except ValueError as e:
            raise SystemExit(f"--bench={spec}: {e}; and the perplexity benches {', '.join(PPL_BENCHES)}") from None
        names += [n for n in new if n not in names]
    if not names:
        raise SystemExit("--bench is empty: name one or several benchmarks, 'mmlu', 'mmlu_all', 'all' or 'wikitext'")
    return names


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


def evaluate_ppl(model, tok, c, b, path):
    """Word and byte perplexity and bits per byte of documents (perplexity.py): the wikitext task's pages,
    detokenized as the harness does, or the user's held-out text as it is."""
    texts, counted = perplexity.documents(path, c.text_field)  # WikiText pages: detokenized, counted as stored
    if c.limit:
        texts, counted = texts[:c.limit], counted[:c.limit]
    max_len = c.max_length or model.args.max_seq_len
    if max_len < 2 or max_len > model.args.max_seq_len:
        raise SystemExit(f"max_length={max_len}: rolling windows need 2 to {model.args.max_seq_len} tokens "
                         f"(the model's context); set --max_length")
    prefix = perplexity.prefix_token(tok)
    docs = [tok.encode(t) for t in texts]
    windows = [perplexity.rolling_windows(d, prefix, max_len) for d in docs]
    t0 = time.perf_counter()
    flat = score_windows(model, [w for ws in windows for w in ws], c.batch_size, c.device)
    elapsed = time.perf_counter() - t0
    logliks, k = [], 0
    for ws in windows:
        logliks.append(sum(flat[k:k + len(ws)]))
        k += len(ws)
    res = {"bench": b, "n": len(docs), **perplexity.metrics(logliks, counted, sum(map(len, docs))),
           "max_length": max_len, "windows": len(flat), "model": c.init_from, "lora": c.lora or None,
           "data": os.path.abspath(path), "elapsed_s": round(elapsed, 3)}
    if os.path.isfile(path):
        res["data_sha256"] = sha256_file(path)
    rows = [{"bench": b, "id": i, "loglikelihood": ll, "tokens": len(d), "words": perplexity.word_count(t),
             "bytes": len(t.encode("utf-8"))} for i, (ll, d, t) in enumerate(zip(logliks, docs, counted))]
    return res, rows


def load_for_eval(c):
    model = load_model(c.init_from, dtype=getattr(torch, c.dtype), device=c.device)
    if c.lora:
        load_adapter(model, c.lora)
        merge_lora(model)  # W + scale * B @ A once: inference then costs what the base model costs
    return model.eval()


def pooled(rs):
    """Tasks as one: accuracy over all their questions (the harness' group accuracy, weighted by size)."""
    n, k = sum(r["n"] for r in rs), sum(r["correct"] for r in rs)
    norm = None if any(r["acc_norm"] is None for r in rs) else sum(r["acc_norm"] * r["n"] for r in rs) / n
    return {"n": n, "acc": k / n, "acc_ci95": wilson_ci(k, n), "acc_norm": norm}


def macro(rs):
    """The unweighted mean of the tasks' accuracies."""
    norm = None if any(r["acc_norm"] is None for r in rs) else sum(r["acc_norm"] for r in rs) / len(rs)
    return {"n": sum(r["n"] for r in rs), "acc": sum(r["acc"] for r in rs) / len(rs), "acc_ci95": None,
            "acc_norm": norm}


def summarize(results):
    """Rows beyond the tasks: MMLU-medical pooled over its questions (a micro average, as one 1,089-question task)
    when several of its subjects ran; the unweighted (macro) mean of the medical tasks' accuracies when several
    ran; and, when MMLU beyond its medical subjects ran, each category and all the subjects run, pooled (micro) and
    as the mean of subjects (macro)."""
    rows = {}
    medical_mmlu = [r for b, r in results.items() if b in qa_data.GROUPS["mmlu"]]
    if len(medical_mmlu) > 1:
        rows["mmlu_medical (pooled)"] = pooled(medical_mmlu)
    mmlu = {b: r for b, r in results.items() if b.startswith("mmlu_")}
    general = len(mmlu) > len(medical_mmlu)
    medical = [r for b, r in results.items() if b in qa_data.BENCHMARKS]
    if len(medical) > 1 and (not general or len(medical) == len(qa_data.BENCHMARKS)):
        rows[f"mean of {len(medical)} tasks"] = macro(medical)
    if general:
        for cat in qa_data.MMLU_CATEGORIES:
            rs = [r for b, r in mmlu.items() if qa_data.mmlu_category(b) == cat]
            if rs:
                rows[f"mmlu_{cat} (pooled)"] = pooled(rs)
        rows[f"mmlu, {len(mmlu)} subjects (pooled)"] = pooled(list(mmlu.values()))
        rows[f"mmlu, {len(mmlu)} subjects (macro)"] = macro(list(mmlu.values()))
    return rows


def table_text(head, lines, markdown):
    """Rows of strings as a markdown table, or as console text with aligned columns."""
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(l) + " |" for l in lines]
    w = [max(len(x) for x in col) for col in zip(head, *lines)]
    return [" ".join(x.ljust(w[0]) if j == 0 else x.rjust(w[j]) for j, x in enumerate(row)) for row in [head] + lines]


def ppl_lines(results, markdown=False):
    """The perplexity table (one row per perplexity bench), after a blank line, as console text or markdown."""
    head = ("task", "documents", "tokens", "word_perplexity", "byte_perplexity", "bits_per_byte", "max_length")
    lines = [(b, str(r["n"]), str(r["tokens"]), f"{r['word_perplexity']:.4f}", f"{r['byte_perplexity']:.4f}",
              f"{r['bits_per_byte']:.4f}", str(r["max_length"])) for b, r in results.items()]
    return [""] + table_text(head, lines, markdown) if lines else []


def table_lines(results, summary, markdown=False):
    """The results table, as console text or a markdown table."""
    head = ("task", "n", "acc", "95% CI", "acc_norm", "no_answer", "q/s")
    if not results:
        return []
    lines = []
    for name, r in list(results.items()) + list(summary.items()):
        ci = f"[{r['acc_ci95'][0]:.3f}, {r['acc_ci95'][1]:.3f}]" if r.get("acc_ci95") else "-"
        norm = f"{r['acc_norm']:.4f}" if r["acc_norm"] is not None else "-"
        lines.append((name, str(r["n"]), f"{r['acc']:.4f}", ci, norm, str(r.get("no_answer", "-")),
                      f"{r['questions_per_s']:.1f}" if "questions_per_s" in r else "-"))
    return table_text(head, lines, markdown)


def write_atomic(path, text):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # a crash never leaves a half-written file under the final name


def write_results(c, results, summary, ppl, predictions):
    os.makedirs(c.out, exist_ok=True)
    write_atomic(os.path.join(c.out, "predictions.jsonl"), "".join(json.dumps(r) + "\n" for r in predictions))
    write_atomic(os.path.join(c.out, "results.json"), json.dumps(
        {"results": results, "summary": summary, "perplexity": ppl, "config": vars(c)}, indent=2))
    notes = (f"\nModel: `{c.init_from}`" + (f" + LoRA `{c.lora}`" if c.lora else "") + f"; {c.method}, {c.shots}-shot, "
             f"{c.dtype}. 95% CI: Wilson score interval of acc. (pooled): the subjects as one task (micro average, "
             "the harness' group accuracy). mean, (macro): the unweighted mean of the tasks' accuracies. Perplexity: "
             "lm-evaluation-harness' rolling log-likelihood, words and UTF-8 bytes of the documents.\n")
    lines = table_lines(results, summary, markdown=True) + ppl_lines(ppl, markdown=True)
    write_atomic(os.path.join(c.out, "results.md"), "\n".join(lines) + "\n" + notes)


def main(argv=None):
    from types import SimpleNamespace
    c = SimpleNamespace(**configure(dict(globals()), argv))  # a copy: the defaults stay untouched
    benches = parse_benches(c.bench)
    require(c.init_from, "init_from", MODEL_PATHS)
    require(c.tokenizer or c.init_from, "tokenizer", TOKENIZER_PATHS)
    paths = {b: resolve_data(c, b, len(benches) == 1) for b in benches}
    model = load_for_eval(c)
    tok = Tokenizer(c.tokenizer or c.init_from)
    results, ppl, predictions = {}, {}, []
    for b in benches:
        if b in PPL_BENCHES:
            ppl[b], rows = evaluate_ppl(model, tok, c, b, paths[b])
        else:
            results[b], rows = evaluate_bench(model, tok, c, b, paths[b])
        predictions += rows
    summary = summarize(results)
    write_results(c, results, summary, ppl, predictions)
    print("\n".join(table_lines(results, summary) + ppl_lines(ppl)))
    print(f"wrote {os.path.join(c.out, 'results.md')}, results.json and predictions.jsonl", file=sys.stderr)
    return {**results, **ppl}


if __name__ == "__main__":
    main()
