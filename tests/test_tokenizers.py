"""Tokenizer(path) for every format a LLaMA-family checkpoint ships, each checked against an independent
reference: raw sentencepiece, transformers' tokenizers (from the same GGUF or folder), and llama.cpp's
pre-tokenizer regexes (llama-vocab.cpp) run with the `regex` package."""
import functools
import glob
import json
import os
import sys
import unicodedata

import pytest
import sentencepiece as spm

from conftest import data_path
from tokenizer import Tokenizer

tokenizers = pytest.importorskip("tokenizers")


def need_gguf():
    """gguf-py, or a skip: only the tests that read or write a GGUF need it."""
    return pytest.importorskip("gguf", reason="pip install gguf (llama.cpp's gguf-py)")

EDGE = [" leading space", "two  spaces  ", "\n\nnewlines\n", "", " ", "tab\there", "emoji 🧬 DNA", "中文 text",
        "naïve café, 37 °C, 5 µg/mL, α-β ≥ 2", "x\u00a0y", "mm²  12", "<s> and </s> and <|im_end|> stay text"]
PLAIN = EDGE[:-1]  # transformers matches special strings inside a text; we keep them text


@functools.lru_cache(maxsize=None)
def real_texts():
    """1,200 real texts: PubMedQA contexts, MedMCQA questions, CRAFT paragraphs (half non-ASCII), USMLE."""
    records = json.load(open(data_path("pubmedqa", "ori_pqal.json")))
    texts = ["\n".join(r["CONTEXTS"]) for r in list(records.values())[:400]]
    with open(data_path("medmcqa", "dev.json")) as f:
        texts += [json.loads(line)["question"] for _, line in zip(range(300), f)]
    paragraphs = []
    for path in sorted(glob.glob(os.path.join(data_path("biomed_corpus", "craft_pmc_oa_fulltext", "txt"), "*.txt"))):
        paragraphs += [p for p in open(path, encoding="utf-8").read().split("\n") if p.strip()]
    texts += [p for p in paragraphs if not p.isascii()][:150] + [p for p in paragraphs if p.isascii()][:150]
    for line in open(data_path("medqa_usmle", "sample_200.jsonl")):
        q = json.loads(line)
        texts.append(q["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in q["options"].items()))
    assert len(texts) == 1200 and sum(not t.isascii() for t in texts) >= 150
    return tuple(texts)


def write_gguf(path, arch="llama", **fields):
    """A tensor-less GGUF holding metadata only: each keyword names a GGUFWriter.add_* method."""
    w = need_gguf().GGUFWriter(str(path), arch)
    for method, value in fields.items():
        getattr(w, method)(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def smol_meta(smollm2_gguf):
    """The SmolLM2 GGUF's tokenizer metadata as gguf-py reads it."""
    fields = need_gguf().GGUFReader(smollm2_gguf).fields
    return {k: f.contents() for k, f in fields.items() if k.startswith("tokenizer.ggml.")}


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    need_gguf()
    return Tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def smol_hf(smollm2_gguf):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf))


# --- SmolLM2 GGUF (byte-level BPE, tokenizer.ggml.pre = "smollm") ---------------------------------------

# llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM (llama-vocab.cpp): each number character on its own, then GPT-2's
# regex on each piece; text a regex leaves unmatched stays a piece of its own.
LLAMA_CPP_SMOLLM = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]


def llama_cpp_split(text, patterns=LLAMA_CPP_SMOLLM):
    import regex
    pieces = [text]
    for pattern in patterns:
        out = []
        for piece in pieces:
            end = 0
            for m in regex.finditer(pattern, piece):
                out += [piece[end:m.start()]] * (m.start() > end) + [m.group()]
                end = m.end()
            out += [piece[end:]] * (end < len(piece))
        pieces = out
    return pieces


def gpt2_split_differs(text):
    r"""Where transformers' GGUF converter (GPT-2's regex alone, no number split first) cuts differently from
    llama.cpp's "smollm": a whitespace run of 2+ ending at a number ("time  70": llama.cpp keeps "  " whole,
    GPT-2's `\s+(?!\S)` leaves the last space to join " 70"), or one space before a non-ASCII number
    (" ²": GPT-2 joins the space to the bytes of "²"). One space before an ASCII digit cuts " 7" but
    gives "Ġ", "7" all the same: the file has no "Ġ 7" merge (checked below)."""
    for i in range(1, len(text)):
        if unicodedata.category(text[i])[0] == "N" and text[i - 1].isspace():
            if (i >= 2 and text[i - 2].isspace()) or (text[i - 1] == " " and text[i] not in "0123456789"):
                return True
    return False


def test_smollm2_gguf_encodes_as_llama_cpp_and_smollm2(smol, smol_hf, smol_meta):
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    texts = real_texts() + tuple(EDGE)
    ours = smol.encode_batch(texts)
    assert smol.kind == "gguf" and [smol.encode(t) for t in texts[:50]] == ours[:50]
    assert ours == smol.encode_batch(texts, num_threads=1)
    # 1. our pre-tokenizer cuts every text exactly where llama.cpp's "smollm" regexes do
    byte = bytes_to_unicode()
    for t in texts:
        expect = ["".join(byte[b] for b in piece.encode()) for piece in llama_cpp_split(t)]
        assert [p for p, _ in smol.tk.pre_tokenizer.pre_tokenize_str(t)] == expect, t
    # 2. SmolLM2's own tokenizer.json pre-tokenizer (Digits(individual_digits) then ByteLevel) over the
    # vocabulary and merges as transformers reads them from the GGUF: same ids on every text
    model = tokenizers.Tokenizer.from_str(smol_hf.backend_tokenizer.to_str())
    model.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    assert ours[:len(real_texts())] == [e.ids for e in model.encode_batch(list(real_texts()), add_special_tokens=False)]
    # 3. transformers' GGUF tokenizer as it stands: same ids wherever its GPT-2-only split cannot differ
    merges = smol_meta["tokenizer.ggml.merges"]
    assert not [m for m in merges if m.startswith("Ġ ") and m[2:].isdigit()]
    assert not [m for m in merges if m.replace(" ", "").isdigit()]  # digits are never merged either
    texts, ours = texts[:-1], ours[:-1]  # drop the text holding special strings
    hf = smol_hf(list(texts), add_special_tokens=False).input_ids
    differ = [i for i, t in enumerate(texts) if gpt2_split_differs(t)]
    assert [i for i, (o, h) in enumerate(zip(ours, hf)) if o != h] == differ, \
        "transformers' GGUF tokenizer now splits numbers for 'smollm'? then update gpt2_split_differs and the report"
    assert len(differ) == 5  # 4 real texts (USMLE lab tables, a PubMedQA "\xa0 3") and "mm²  12"
    vocab = {t: i for i, t in enumerate(smol_meta["tokenizer.ggml.tokens"])}
    assert smol.encode(" time  70 s") == [vocab[t] for t in ("Ġtime", "ĠĠ", "7", "0", "Ġs")]
    assert smol_hf(" time  70 s", add_special_tokens=False).input_ids == [vocab[t] for t in
                                                                          ("Ġtime", "Ġ", "Ġ", "7", "0", "Ġs")]
    assert [smol.decode(ids) for ids in ours] == list(texts)


def test_smollm2_gguf_special_tokens(smol, smol_hf, smol_meta):
    meta = {k[len("tokenizer.ggml."):]: v for k, v in smol_meta.items()}
    assert (smol.bos_id, smol.eos_id, smol.pad_id) == (meta["bos_token_id"], meta["eos_token_id"],
                                                       meta["padding_token_id"]) == (1, 2, 2)
    assert (smol.bos_id, smol.eos_id, smol.pad_id) == (smol_hf.bos_token_id, smol_hf.eos_token_id, smol_hf.pad_token_id)
    assert smol.add_bos is meta["add_bos_token"] is False and smol.add_eos is False
    assert smol.vocab_size == len(meta["tokens"]) == len(smol_hf) == 49152
    assert smol.id_to_piece(2) == "<|im_end|>" == smol_hf.convert_ids_to_tokens(2)
    text = "Aspirin inhibits COX-1."
    assert smol_hf(text).input_ids == smol.encode(text, bos=smol.add_bos)  # transformers adds no BOS either
    ids = smol.encode(text, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and smol.decode(ids) == text  # decode drops specials
    # a special's string inside a text stays text (transformers would emit the control id)
    assert 2 not in smol.encode("a <|im_end|> b") and smol.decode(smol.encode("a <|im_end|> b")) == "a <|im_end|> b"


# --- sentencepiece vocabularies in a GGUF (tokenizer.ggml.model = "llama") -----------------------------

def llama_gguf(path, tokenizer_path, **extra):
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    n = sp.vocab_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    fields = dict(add_tokenizer_model="llama", add_token_list=[sp.id_to_piece(i) for i in range(n)],
                  add_token_scores=[sp.get_score(i) for i in range(n)], add_token_types=types,
                  add_bos_token_id=sp.bos_id(), add_eos_token_id=sp.eos_id(), add_unk_token_id=sp.unk_id())
    return sp, write_gguf(path, **{**fields, **extra})


@pytest.fixture(scope="module")
def llama_vocab_gguf(tmp_path_factory):
    """The real LLaMA tokenizer.model's vocabulary as a "llama" GGUF (add_bos_token true)."""
    path = data_path("tokenizer", "llama_tokenizer.model")
    return llama_gguf(tmp_path_factory.mktemp("gguf") / "llama.gguf", path, add_add_bos_token=True)


def test_llama_gguf_matches_sentencepiece(tmp_path, tokenizer_path, llama_vocab_gguf):
    sp, path = llama_vocab_gguf
    tok = Tokenizer(path)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == ("gguf", 32000, 1, 2, 2, True)
    texts = list(real_texts()[:150] + real_texts()[400:450] + real_texts()[700:800]) + EDGE
    texts += [" " * n for n in range(1, 60)] + ["a" + " " * n + "b" for n in range(1, 60)]  # the tied-score "▁" runs
    ids = tok.encode_batch(texts)
    assert ids == sp.encode(texts)  # " leading space" too: one dummy "▁" more than transformers gives
    assert [tok.decode(i) for i in ids] == [sp.decode(i) for i in ids] == texts
    assert tok.encode("x", bos=tok.add_bos, eos=True) == [1] + sp.encode("x") + [2]
    # add_space_prefix false: no dummy "▁", so " " + text encodes as sentencepiece encodes the text
    _, path = llama_gguf(tmp_path / "noprefix.gguf", tokenizer_path, add_add_space_prefix=False)
    bare = Tokenizer(path)
    assert bare.add_bos  # llama.cpp's default for a sentencepiece vocabulary without the key
    plain = [t for t in texts if t and not t[0].isspace()]
    assert bare.encode_batch([" " + t for t in plain]) == sp.encode(plain)
    assert [bare.decode(bare.encode(t)) for t in plain] == plain


def test_transformers_llama_gguf_drops_the_dummy_prefix_before_a_space(llama_vocab_gguf):
    """Why we follow sentencepiece/llama.cpp, not transformers, for a "llama" GGUF: transformers'
    Metaspace(prepend_scheme="first") adds no "▁" to a text that starts with a space."""
    from transformers import AutoTokenizer
    sp, path = llama_vocab_gguf
    hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file="llama.gguf")
    texts = list(real_texts()[:100])
    assert hf(texts, add_special_tokens=False).input_ids == sp.encode(texts) == Tokenizer(path).encode_batch(texts)
    assert sp.encode(" lead") == Tokenizer(path).encode(" lead") == [29871, 3275] != hf(" lead").input_ids[1:]


# --- tokenizer.json folders and save_pretrained ------------------------------------------------------

def test_save_pretrained_smollm2_loads_in_transformers(tmp_path, smol):
    from transformers import AutoTokenizer
    smol.save_pretrained(tmp_path / "hf")
    tok, hf = Tokenizer(str(tmp_path / "hf")), AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok.kind == "tokenizer.json" and tok.path == str(tmp_path / "hf" / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.vocab_size) == (1, 2, 2, False, 49152)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 2)
    texts = list(real_texts()[::4]) + PLAIN
    ids = tok.encode_batch(texts)
    assert ids == smol.encode_batch(texts) == hf(texts, add_special_tokens=False).input_ids
    assert hf(texts).input_ids == [tok.encode(t, bos=tok.add_bos) for t in texts]


def test_save_pretrained_sentencepiece_loads_in_transformers(tmp_path, tokenizer_path):
    from transformers import AutoTokenizer
    sp, tok = spm.SentencePieceProcessor(model_file=tokenizer_path), Tokenizer(tokenizer_path)
    tok.save_pretrained(tmp_path / "hf")
    assert sorted(os.listdir(tmp_path / "hf")) == ["special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                                                  "tokenizer_config.json"]
    hf, again = AutoTokenizer.from_pretrained(str(tmp_path / "hf")), Tokenizer(str(tmp_path / "hf"))
    texts = list(real_texts()[::6]) + PLAIN
    assert hf(texts, add_special_tokens=False).input_ids == sp.encode(texts) == again.encode_batch(texts)
    assert hf(texts).input_ids == [[1] + ids for ids in sp.encode(texts)]  # add_bos: transformers adds <s> too
    assert (hf.bos_token_id, hf.eos_token_id) == (again.bos_id, again.eos_id) == (1, 2) and again.add_bos
    assert [again.decode(i) for i in sp.encode(texts)] == texts


def llama3_style_folder(folder, smol, config=None, tokenizer_config=None):
    """SmolLM2's vocabulary with Llama-3's specials appended and Llama-3's post-processor: ByteLevel,
    then a template that starts every text with <|begin_of_text|>."""
    tk = tokenizers.Tokenizer.from_str(smol.tk.to_str())
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tk.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in specials])
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = tokenizers.processors.Sequence([
        tokenizers.processors.ByteLevel(trim_offsets=False),
        tokenizers.processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                 pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                                 special_tokens=[("<|begin_of_text|>", bos)])])
    os.makedirs(folder)
    tk.save(os.path.join(folder, "tokenizer.json"))
    for name, content in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if content is not None:
            json.dump(content, open(os.path.join(folder, name), "w"))
    return str(folder), {s: tk.token_to_id(s) for s in specials}


def test_llama3_style_tokenizer_json_adds_bos(tmp_path, smol):
    """References: transformers' AutoTokenizer, and gguf-py's SpecialVocab (what llama.cpp's converter
    stores as the GGUF's add_bos_token and special ids for that folder)."""
    from transformers import AutoTokenizer
    gguf = need_gguf()
    folder, ids = llama3_style_folder(tmp_path / "l3", smol, config={"eos_token_id": [49153, 49154]},
                                      tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast",
                                                        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})
    tok, hf, llama_cpp = Tokenizer(folder), AutoTokenizer.from_pretrained(folder), gguf.SpecialVocab(folder)
    assert tok.add_bos and llama_cpp.add_special_token["bos"] and not tok.add_eos
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id) == (
        llama_cpp.special_token_ids["bos"], llama_cpp.special_token_ids["eos"]) == (
        ids["<|begin_of_text|>"], ids["<|eot_id|>"])
    assert tok.vocab_size == len(hf) == 49155
    texts = list(real_texts()[::10])
    assert hf(texts).input_ids == [tok.encode(t, bos=tok.add_bos) for t in texts]
    assert hf(texts, add_special_tokens=False).input_ids == tok.encode_batch(texts) == smol.encode_batch(texts)
    # a bare tokenizer.json: BOS from its template; EOS from config.json's list (we take the first,
    # <|end_of_text|>; gguf-py skips a list)
    folder, _ = llama3_style_folder(tmp_path / "bare", smol, config={"eos_token_id": [49153, 49154]})
    tok = Tokenizer(folder)
    assert (tok.add_bos, tok.bos_id, tok.eos_id, tok.pad_id) == (True, ids["<|begin_of_text|>"], 49153, 49153)
    assert gguf.SpecialVocab(folder).add_special_token["bos"]
    # tokenizer_config's add_bos_token overrides the template, as in gguf-py (and transformers' Llama
    # classes); transformers' generic PreTrainedTokenizerFast ignores the key and follows the template
    folder, _ = llama3_style_folder(tmp_path / "off", smol, tokenizer_config={
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "add_bos_token": False})
    tok = Tokenizer(folder)
    assert tok.add_bos is gguf.SpecialVocab(folder).add_special_token["bos"] is False
    assert tok.bos_id == ids["<|begin_of_text|>"] and tok.encode("x y", bos=tok.add_bos) == smol.encode("x y")


def test_folder_with_both_files_uses_tokenizer_json(tmp_path, smol, tokenizer_path):
    import shutil
    smol.save_pretrained(tmp_path / "both")
    shutil.copy(tokenizer_path, tmp_path / "both" / "tokenizer.model")  # a vocabulary of 32000, not 49152
    tok = Tokenizer(str(tmp_path / "both"))
    assert (tok.kind, tok.vocab_size, os.path.basename(tok.path)) == ("tokenizer.json", 49152, "tokenizer.json")
    tok = Tokenizer(str(tmp_path / "both" / "tokenizer.model"))  # the file itself picks sentencepiece
    assert (tok.kind, tok.vocab_size) == ("sentencepiece", 32000)


# --- other llama.cpp pre-tokenizers, against transformers' GGUF converter (which has these right) ----------

@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_byte_level_gguf_pre_tokenizers_match_transformers(tmp_path, pre):
    from transformers import AutoTokenizer
    texts = list(real_texts()[::3]) + PLAIN
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    tk.train_from_iterator(texts[:200], tokenizers.trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet, show_progress=False))
    model = json.loads(tk.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    path = write_gguf(tmp_path / "bpe.gguf", add_tokenizer_model="gpt2", add_tokenizer_pre=pre, add_token_list=tokens,
                      add_token_types=[3] + [1] * (len(tokens) - 1),  # <|endoftext|> is a control token
                      add_token_merges=[" ".join(m) for m in model["merges"]], add_bos_token_id=0, add_eos_token_id=0)
    tok = Tokenizer(path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="bpe.gguf")
    assert tok.encode_batch(texts) == hf(texts, add_special_tokens=False).input_ids
    assert [tok.decode(tok.encode(t)) for t in texts] == texts
    assert tok.add_bos is (pre == "llama-bpe")  # llama.cpp turns BOS on for Llama-3's pre-tokenizer


# --- errors ----------------------------------------------------------------------------------------------

def test_gguf_errors_name_the_file_and_key(tmp_path, monkeypatch):
    tokens = dict(add_token_list=["a", "b", "ab"], add_token_scores=[0.0, 0.0, 1.0], add_token_types=[1, 1, 1])
    cases = [(dict(tokens), r"lacks tokenizer.ggml.model"),
             (dict(tokens, add_tokenizer_model="bert"), r"tokenizer.ggml.model = 'bert' is not supported"),
             (dict(add_tokenizer_model="llama"), r"lacks tokenizer.ggml.tokens"),
             (dict(tokens, add_tokenizer_model="gpt2", add_tokenizer_pre="gpt-2"), r"lacks tokenizer.ggml.merges"),
             (dict(tokens, add_tokenizer_model="gpt2", add_token_merges=["a b"]), r"lacks tokenizer.ggml.pre"),
             (dict(tokens, add_tokenizer_model="gpt2", add_token_merges=["a b"], add_tokenizer_pre="klingon"),
              r"tokenizer.ggml.pre = 'klingon' is not supported")]
    for i, (fields, message) in enumerate(cases):
        path = write_gguf(tmp_path / f"bad{i}.gguf", **fields)
        with pytest.raises(ValueError, match=message) as e:
            Tokenizer(path)
        assert path in str(e.value)
    (tmp_path / "trunc.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        Tokenizer(str(tmp_path / "trunc.gguf"))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match="pip install gguf"):
        Tokenizer(str(tmp_path / "bad0.gguf"))


def test_clear_errors(tmp_path, tokenizer_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no sentencepiece tokenizer"):
        Tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json in folder .*empty"):
        Tokenizer(str(tmp_path / "empty"))
    (tmp_path / "l3").mkdir()  # Llama-3's original/tokenizer.model is tiktoken text, not sentencepiece
    (tmp_path / "l3" / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(ValueError, match="is not a sentencepiece model"):
        Tokenizer(str(tmp_path / "l3"))
    (tmp_path / "cfg").mkdir()
    Tokenizer(tokenizer_path).save_pretrained(tmp_path / "cfg")
    os.remove(tmp_path / "cfg" / "special_tokens_map.json")  # else its bos_token overrides the config's
    json.dump({"bos_token": "<|nope|>"}, open(tmp_path / "cfg" / "tokenizer_config.json", "w"))
    with pytest.raises(ValueError, match="bos_token '<\\|nope\\|>' of tokenizer_config.json is not in"):
        Tokenizer(str(tmp_path / "cfg"))
    os.remove(tmp_path / "cfg" / "tokenizer_config.json")
    with open(tmp_path / "cfg" / "tokenizer.json") as f:
        bare = json.load(f)
    bare["post_processor"] = None
    json.dump(bare, open(tmp_path / "cfg" / "tokenizer.json", "w"))
    tok = Tokenizer(str(tmp_path / "cfg"))  # no config, no template: no BOS known
    assert (tok.bos_id, tok.add_bos) == (None, False) and tok.encode("a") == tok.encode("a", bos=tok.add_bos)
    with pytest.raises(ValueError, match="has no BOS token"):
        tok.encode("a", bos=True)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        Tokenizer(str(tmp_path / "cfg"))
