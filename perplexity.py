"""
Perplexity as lm-evaluation-harness computes it: documents, its rolling windows and its three metrics.

    python eval_qa.py --bench=wikitext --init_from=MODEL --data_root=data    # the harness' `wikitext` task
    python eval_qa.py --bench=ppl --data=held_out/ --init_from=MODEL         # any held-out text, the same metrics

A document's log-likelihood is the sum of log p(token | everything before it in its window) over all its tokens,
scored in windows of max_len tokens: the first conditioned on the prefix token alone (BOS, or EOS for a tokenizer
without one), each later one on the single token before it, the last (shorter) one filled to max_len with the tokens
before it (the harness' get_rolling_token_windows with context_len 1, made disjoint). From the summed log-likelihoods LL, words W and UTF-8 bytes B of all documents:
word_perplexity = exp(-LL / W), byte_perplexity = exp(-LL / B), bits_per_byte = -LL / (B ln 2). Bits per byte is
comparable across tokenizers; perplexity per token is not. The wikitext task scores the detokenized page and counts
the words and bytes of the page as stored (the harness' process_results). This module knows nothing of models.
"""
import glob
import json
import math
import os
import re

from configurator import require


# -----------------------------------------------------------------------------
# documents

def wikitext_detokenize(text):
    """WikiText's tokenized spacing undone, rule for rule as the harness' wikitext_detokenizer does it."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for spaced, joined in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):  # number separators
        text = text.replace(spaced, joined)
    for p in ":;.!?,":  # punctuation
        text = text.replace(f" {p} ", f"{p} ")
    for open_, close in (("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'")):  # spaces inside brackets
        o, c = re.escape(open_), re.escape(close)
        text = re.sub(rf"{o}\s*([^{c}]*?)\s*{c}", lambda m: open_ + m.group(1) + close, text)
    for spaced, joined in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"),
                           (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        text = text.replace(spaced, joined)
    return text


def read_jsonl(path, field):
    """The `field` of every line of a JSON Lines file; a bad line is an error naming the file, line and field."""
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}:{n}: field {field!r}: {type(e).__name__}: {e}") from None
            if not isinstance(value, str):
                raise SystemExit(f"{path}:{n}: field {field!r}: expected a string, got {type(value).__name__}")
            docs.append(value)
    return docs


def read_text_folder(path):
    """Every .txt file of a folder (sorted by name), one document each."""
    files = sorted(glob.glob(os.path.join(path, "*.txt")))
    if not files:
        raise SystemExit(f"{path}: no .txt files (a held-out text folder holds one document per .txt file)")
    return [open(f, encoding="utf-8").read() for f in files]


def read_corpus_val(path):
    """A prepared corpus' held-out split (prepare_corpus.py's out_dir), decoded with its own tokenizer."""
    from corpus_data import load_split
    from tokenizer import Tokenizer
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    if meta["splits"]["val"]["documents"] == 0:
        raise SystemExit(f"{path}: the corpus has no val split (prepare it with --val_fraction > 0)")
    tokens, idx = load_split(path, "val")
    tok = Tokenizer(meta["tokenizer"])
    bos = {tok.bos_id} if tok.bos_id is not None else set()
    return [tok.decode([t for t in tokens[a:b].tolist() if t not in bos and t != meta["eos_id"]])
            for a, b in zip(idx[:-1], idx[1:])]


def load_documents(path, field="text"):
    """Held-out documents from a folder of .txt files, a JSON Lines file (its `field`) or a prepared corpus (its val
    split). Empty documents are an error: they have no tokens to score."""
    require(path, "data", "Give a folder of .txt files, a .jsonl file or a prepare_corpus.py out_dir (--data=...).")
    if os.path.isfile(os.path.join(path, "meta.json")):
        docs = read_corpus_val(path)
    elif os.path.isdir(path):
        docs = read_text_folder(path)
    else:
        docs = read_jsonl(path, field)
    if not docs:
        raise SystemExit(f"{path}: no documents")
    empty = [i for i, d in enumerate(docs) if not d]
    if empty:
        raise SystemExit(f"{path}: document {empty[0]} is empty ({len(empty)} empty in all)")
    return docs


def documents(path, field="text"):
    """(texts to score, texts whose words and bytes count): WikiText pages (JSON Lines of {"page": ...}, the layout of
    the harness' wikitext_document_level) detokenized and counted as stored, as the harness' wikitext task does;
    anything load_documents reads, scored and counted as it is."""
    if os.path.isfile(path) and path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        if first and "page" in json.loads(first):
            pages = read_jsonl(path, "page")
            if not pages:
                raise SystemExit(f"{path}: no pages")
            return [wikitext_detokenize(p) for p in pages], pages
    docs = load_documents(path, field)
    return docs, docs


# -----------------------------------------------------------------------------
# rolling windows and metrics

def prefix_token(tok):
    """The token a document's first token is conditioned on: BOS, or EOS for a tokenizer without one (the harness'
    prefix_token_id)."""
    prefix = tok.bos_id if tok.bos_id is not None else tok.eos_id
    if prefix is None:
        raise SystemExit(f"{tok.path}: no BOS or EOS token to condition a document's first token on")
    return prefix


def rolling_windows(tokens, prefix_id, max_len):
    """(inputs, targets) per window, targets aligned with inputs (-100: context, not scored), every token scored
    once: the first window is prefix_id + tokens[:max_len - 1] -> tokens[:max_len]; each later one scores the next
    max_len tokens given the one before them; the last, shorter one is filled to max_len with the tokens before it as
    context (the harness' get_rolling_token_windows with context_len 1, made disjoint)."""
    if max_len < 1:
        raise ValueError(f"max_len={max_len}: a window needs at least 1 position")
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    windows = [([prefix_id] + tokens[:first - 1], tokens[:first])]
    for start in range(max_len, len(tokens), max_len):
        end = min(start + max_len, len(tokens))
        inputs = tokens[end - max_len - 1:end - 1]
        windows.append((inputs, [-100] * (len(inputs) - (end - start)) + tokens[start:end]))
    return windows


def word_count(text):
    return len(re.split(r"\s+", text))  # the harness' count: a leading or trailing space adds an empty word


def metrics(logliks, texts, n_tokens):
    """The harness' three aggregates over all documents, and ours per token (for this tokenizer only)."""
    ll, words = sum(logliks), sum(word_count(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"documents": len(texts), "words": words, "bytes": n_bytes, "tokens": n_tokens, "loglikelihood": ll,
            "word_perplexity": math.exp(-ll / words), "byte_perplexity": math.exp(-ll / n_bytes),
            "bits_per_byte": -ll / n_bytes / math.log(2), "token_perplexity": math.exp(-ll / max(n_tokens, 1))}
