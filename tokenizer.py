"""
Text <-> token ids for the LLaMA family, whatever form a checkpoint ships its tokenizer in.

`Tokenizer(path)` takes
  - a sentencepiece `tokenizer.model` (LLaMA-1/2, PMC-LLaMA), run by sentencepiece itself;
  - an HF `tokenizer.json` (Llama-3, SmolLM2, Mistral), run by the `tokenizers` package;
  - an HF folder holding either. With both, tokenizer.json wins: it is the file transformers'
    AutoTokenizer runs for that checkpoint, and it carries what a .model cannot: tokens added by a
    fine-tune (a <pad> makes LLaMA-2's vocabulary 32001), the normalizer and pre-tokenizer, the
    special-token template. Pass the tokenizer.model path itself to get sentencepiece;
  - a llama.cpp `.gguf` file: the vocabulary stored under `tokenizer.ggml.*` is rebuilt as a
    `tokenizers` pipeline that encodes the way llama.cpp does (see `_from_gguf`).

BOS convention. `encode` adds BOS/EOS only when asked (bos=, eos=). `add_bos` tells whether this
tokenizer's own convention starts every text with BOS: LLaMA-1/2 sentencepiece yes, Llama-3 yes
(<|begin_of_text|>), SmolLM2 no. Callers that want the model's convention write
`tok.encode(text, bos=tok.add_bos)`. Where it comes from: a GGUF's `tokenizer.ggml.add_bos_token`
(absent: llama.cpp's default, True for a sentencepiece vocabulary or Llama-3's pre-tokenizer); a
folder's tokenizer_config.json `add_bos_token`, else the BOS that tokenizer.json's post-processor
template puts first (llama.cpp's converter, gguf-py's SpecialVocab, reads a folder in this order;
transformers' generic PreTrainedTokenizerFast follows the template alone); True for a sentencepiece
model unless its folder's tokenizer_config.json says otherwise. `add_eos` likewise (rarely True).

Special-token strings inside a text ("<s>", "<|im_end|>") are encoded as plain text, as sentencepiece
does: a document quoting one must not inject a control id (transformers matches them as specials).
decode drops special ids, as sentencepiece does.

`bos_id`, `eos_id` are None when a tokenizer has none. `pad_id` is the pad piece when there is one,
else EOS: harmless, every padded position is masked out of the loss and attention results.

`kind` says which reader ran ("sentencepiece", "tokenizer.json", "gguf"); `save_pretrained(folder)`
writes an HF tokenizer folder that transformers loads to the same ids. `tokenizers` and `gguf` are
imported only when a tokenizer.json or a .gguf is read (or a folder written).
"""
import functools
import importlib
import json
import os
import shutil

import sentencepiece as spm

# llama.cpp's BPE pre-tokenizers (llama-vocab.cpp), by `tokenizer.ggml.pre`: splits applied in turn.
# "gpt2" is ByteLevel's own GPT-2 regex; "digits" first cuts every number character off on its own,
# as `\p{N}` does in llama.cpp and Digits(individual_digits=True) in SmolLM2's/StarCoder's tokenizer.json.
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE = {**dict.fromkeys(["gpt-2", "phi-2", "mpt", "olmo"], ["gpt2"]),
        **dict.fromkeys(["smollm", "starcoder", "refact", "codeshell"], ["digits", "gpt2"]),
        **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"], [_SPLIT % "{1,3}"]),
        **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2"], [_SPLIT % ""])}
_LLAMA3 = {"llama3", "llama-v3", "llama-bpe", "falcon3"}  # llama.cpp: a word found whole skips the merges; BOS on
# what `tokenizer=` settings accept (the one-line error of a missing path)
TOKENIZER_PATHS = ("It takes a tokenizer.model, a tokenizer.json, a folder holding one, or a .gguf; by default the one "
                   "inside init_from.")
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp's token types


def _need(module):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this file format (tokenizer.json or .gguf) needs the `{module}` package: "
                          f"pip install {module}") from e


def gguf_reader(path):
    """llama.cpp's GGUFReader for path, shared by the tokenizer and weights.py: it parses every metadata field up
    front (seconds for a 49k-token vocabulary), so a script that loads a GGUF's weights and its vocabulary parses
    the file once. Cached per file version (path, mtime, size)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    st = os.stat(path)
    return _gguf_reader(os.path.abspath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _gguf_reader(path, mtime_ns, size):
    gguf = _need("gguf")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    reader.path = path  # for error messages
    return reader


def find_tokenizer(path):
    """The tokenizer file for `path`: a tokenizer.model, tokenizer.json or .gguf file, or a folder holding
    tokenizer.json or tokenizer.model (tokenizer.json first, see the module docstring)."""
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"no sentencepiece tokenizer (tokenizer.model) or tokenizer.json in folder {path} "
                                "(a .gguf is passed as the file itself)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no sentencepiece tokenizer, tokenizer.json or .gguf at {path} "
                                "(pass the file or a folder holding tokenizer.model or tokenizer.json)")
    return path


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _flag(cfg, name, default):
    """A config's bool, or `default` where it is absent or null."""
    return cfg[name] if isinstance(cfg.get(name), bool) else default


def _template_ids(post):
    """(ids before $A, ids after $A) that a tokenizer.json post-processor adds around a single text."""
    post = post or {}
    if post.get("type") == "Sequence":  # Llama-3: [ByteLevel, TemplateProcessing]
        return next((r for r in map(_template_ids, post["processors"]) if r != ([], [])), ([], []))
    if post.get("type") != "TemplateProcessing":
        return [], []
    before, after, seen = [], [], False
    for piece in post["single"]:
        if "Sequence" in piece:
            seen = True
        else:
            (after if seen else before).extend(post["special_tokens"][piece["SpecialToken"]["id"]]["ids"])
    return before, after


def _sentencepiece_bpe(tokens, scores, types, unk_id, space_prefix):
    """A `tokenizers` BPE that encodes like sentencepiece's BPE (and llama.cpp's SPM) over this vocabulary.

    Sentencepiece merges the adjacent pair whose joined piece scores highest; a BPE whose merges are
    every split of every normal piece into two normal pieces, ranked by the joined piece's score, does
    the same. Equal scores are ranked by id, where sentencepiece takes the leftmost pair; LLaMA's only ties
    are its "▁"-run pieces, whose cuts agree with sentencepiece's (tested up to 59). Unknown characters fall
    back to the <0xNN> byte pieces. Spaces become "▁" and, with `space_prefix` (add_dummy_prefix), one
    "▁" is prepended to every text, even one that starts with a space, as sentencepiece and llama.cpp
    do; transformers' Metaspace(prepend_scheme="first") adds none there.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers
    normal = {t for t, ty in zip(tokens, types) if ty == NORMAL}
    ranked = sorted((-s, i, t[:k], t[k:]) for i, (t, s) in enumerate(zip(tokens, scores)) if t in normal
                    for k in range(1, len(t)) if t[:k] in normal and t[k:] in normal)
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [(a, b) for _, _, a, b in ranked],
                              unk_token=None if unk_id is None else tokens[unk_id], fuse_unk=True, byte_fallback=True))
    prepend = [normalizers.Prepend("▁")] if space_prefix else []
    tk.normalizer = normalizers.Sequence(prepend + [normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(" ", 1, 0)] if space_prefix else []
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()] + strip)
    return tk


def _byte_level_bpe(tokens, merges, pre):
    """A `tokenizers` byte-level BPE (tokens already spelled in the byte alphabet, Ġ for a space) split
    before merging as llama.cpp's pre-tokenizer `pre` does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ", 1)) for m in merges],
                              ignore_merges=pre in _LLAMA3))
    steps = [pre_tokenizers.Digits(individual_digits=True) if r == "digits" else
             pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE[pre] if r != "gpt2"]
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        steps + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex="gpt2" in _PRE[pre])])
    tk.decoder = decoders.ByteLevel()
    return tk


def _add_specials(tk, tokens, types):
    """Control tokens become special tokens, user-defined ones added tokens (matched whole in text)."""
    from tokenizers import AddedToken
    typed = list(zip(tokens, types))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in typed if ty == CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in typed if ty == USER_DEFINED])
    return tk


class Tokenizer:
    def __init__(self, path):
        self.path = find_tokenizer(path)
        self.sp = self.tk = None
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            self.kind = "gguf"
            self._from_gguf()
        elif self.path.endswith(".json"):
            self.kind = "tokenizer.json"
            self._from_json()
        else:
            self.kind = "sentencepiece"
            self._from_sentencepiece()
        if self.tk is not None:
            self.tk.encode_special_tokens = True  # special strings in a text stay text (module docstring)
            self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self.add_bos = bool(self.add_bos) and self.bos_id is not None  # no BOS token, no BOS convention
        self.add_eos = bool(self.add_eos) and self.eos_id is not None

    def _from_sentencepiece(self):
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError) as e:  # e.g. Llama-3's original/tokenizer.model is a tiktoken file
            raise ValueError(f"{self.path} is not a sentencepiece model ({e}); "
                             "for Llama-3 pass the folder's tokenizer.json") from e
        sp = self.sp
        self.vocab_size = sp.vocab_size()
        self.bos_id, self.eos_id, self.pad_id = (i if i >= 0 else None for i in (sp.bos_id(), sp.eos_id(), sp.pad_id()))
        cfg = _read_json(os.path.join(os.path.dirname(self.path), "tokenizer_config.json"))
        self.add_bos = _flag(cfg, "add_bos_token", True)  # LLaMA's convention unless the folder says otherwise
        self.add_eos = _flag(cfg, "add_eos_token", False)

    def _from_json(self):
        tokenizers = _need("tokenizers")
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        self.tk = tokenizers.Tokenizer.from_str(text)
        folder = os.path.dirname(self.path)
        cfg = _read_json(os.path.join(folder, "tokenizer_config.json"))
        if "added_tokens_decoder" not in cfg:  # transformers reads this legacy map only then, and lets it override
            cfg.update(_read_json(os.path.join(folder, "special_tokens_map.json")))
        model_cfg = _read_json(os.path.join(folder, "config.json"))

        def special(name):
            tok = cfg.get(f"{name}_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if isinstance(tok, str):
                i = self.tk.token_to_id(tok)
                if i is None:
                    raise ValueError(f"{folder}: {name}_token {tok!r} of tokenizer_config.json is not in {self.path}")
                return i
            i = model_cfg.get(f"{name}_token_id")
            # Llama-3-Instruct lists several stop ids ([end_of_text, eom, eot]): the first ends a document
            return i[0] if isinstance(i, list) and i else i if isinstance(i, int) else None

        self.bos_id, self.eos_id, self.pad_id = special("bos"), special("eos"), special("pad")
        before, after = _template_ids(json.loads(text).get("post_processor"))
        self.add_bos, self.add_eos = _flag(cfg, "add_bos_token", bool(before)), _flag(cfg, "add_eos_token", bool(after))
        if self.bos_id is None and before:  # a bare tokenizer.json: its template names the BOS
            self.bos_id = before[0]
        if self.eos_id is None and after:
            self.eos_id = after[-1]

    def _from_gguf(self):
        """Rebuild the tokenizer llama.cpp runs from a GGUF's `tokenizer.ggml.*` metadata.

        model "gpt2": byte-level BPE from tokens + merges ("left right"), split first as the
        pre-tokenizer `tokenizer.ggml.pre` says (one of `_PRE`; llama.cpp refuses an unknown one too).
        model "llama": sentencepiece-style vocabulary (tokens + scores + token_type, <0xNN> byte pieces),
        see `_sentencepiece_bpe`; `tokenizer.ggml.add_space_prefix` (default true) is add_dummy_prefix.
        """
        _need("tokenizers")
        fields = gguf_reader(self.path).fields

        def key(name, default=KeyError):
            if f"tokenizer.ggml.{name}" in fields:
                return fields[f"tokenizer.ggml.{name}"].contents()
            if default is KeyError:
                raise ValueError(f"{self.path}: GGUF lacks tokenizer.ggml.{name}, needed to build its tokenizer")
            return default

        model = key("model")
        if model not in ("gpt2", "llama"):
            raise ValueError(f"{self.path}: tokenizer.ggml.model = {model!r} is not supported (gpt2, llama)")
        tokens = key("tokens")
        types = key("token_type", [NORMAL] * len(tokens))
        if model == "gpt2":
            pre = key("pre")
            if pre not in _PRE:
                raise ValueError(f"{self.path}: tokenizer.ggml.pre = {pre!r} is not supported "
                                 f"({', '.join(sorted(_PRE))})")
            self.tk = _byte_level_bpe(tokens, key("merges"), pre)
            default_bos = pre in _LLAMA3
        else:
            self.tk = _sentencepiece_bpe(tokens, key("scores"), types, key("unknown_token_id", None),
                                         key("add_space_prefix", True))
            default_bos = True  # llama.cpp's default for a sentencepiece vocabulary
        _add_specials(self.tk, tokens, types)
        self.bos_id, self.eos_id = key("bos_token_id", None), key("eos_token_id", None)
        self.pad_id = key("padding_token_id", None)
        self.add_bos, self.add_eos = key("add_bos_token", default_bos), key("add_eos_token", False)

    def _wrap(self, ids, bos, eos):
        for flag, i, name in ((bos, self.bos_id, "BOS"), (eos, self.eos_id, "EOS")):
            if flag and i is None:
                raise ValueError(f"{self.path} has no {name} token")
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode(self, text, bos=False, eos=False):
        ids = self.sp.encode(text) if self.sp else self.tk.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, bos, eos)

    def encode_batch(self, texts, bos=False, eos=False, num_threads=-1):
        """Many texts at once in sentencepiece's or tokenizers' native loop (num_threads=-1: all cores;
        1 inside a worker pool: one thread, texts one after another)."""
        if self.sp:
            out = self.sp.encode(list(texts), num_threads=num_threads)
        elif num_threads == 1:
            out = [self.tk.encode(t, add_special_tokens=False).ids for t in texts]
        else:
            out = [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]
        return [self._wrap(ids, bos, eos) for ids in out]

    def decode(self, ids):
        ids = [int(i) for i in ids]
        return self.sp.decode(ids) if self.sp else self.tk.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, i):
        return self.sp.id_to_piece(int(i)) if self.sp else self.tk.id_to_token(int(i))

    def save_pretrained(self, folder):
        """Write what transformers' AutoTokenizer.from_pretrained(folder) needs to give our ids, and to add
        BOS/EOS with add_special_tokens=True exactly when add_bos/add_eos say.

        Always a tokenizer.json (post-processor template following add_bos/add_eos; special strings in
        text matched again, as transformers expects) with tokenizer_config.json (class
        PreTrainedTokenizerFast, which runs that file as written) and special_tokens_map.json.
        A sentencepiece tokenizer also gets its tokenizer.model copied (llama.cpp's converter and
        sentencepiece users read it); its tokenizer.json is `_sentencepiece_bpe` over the same
        vocabulary, because transformers 5 rebuilds a LlamaTokenizer from a .model with Metaspace (" x"
        then loses sentencepiece's dummy "▁") and needs protobuf to read the .model at all.
        """
        tokenizers = _need("tokenizers")
        os.makedirs(folder, exist_ok=True)
        if self.sp:
            sp = self.sp
            pieces = [sp.id_to_piece(i) for i in range(self.vocab_size)]
            types = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else BYTE if sp.is_byte(i)
                     else UNUSED if sp.is_unused(i) else NORMAL for i in range(self.vocab_size)]
            tk = _add_specials(_sentencepiece_bpe(pieces, [sp.get_score(i) for i in range(self.vocab_size)], types,
                                                  sp.unk_id() if sp.unk_id() >= 0 else None, True), pieces, types)
            shutil.copyfile(self.path, os.path.join(folder, "tokenizer.model"))
        else:
            tk = tokenizers.Tokenizer.from_str(self.tk.to_str())
        names = {f"{n}_token": self.id_to_piece(i) for n, i in
                 (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id)) if i is not None}
        bos, eos = [names.get("bos_token")] * self.add_bos, [names.get("eos_token")] * self.add_eos
        single = " ".join(bos + ["$A"] + eos)
        pair = " ".join([single] + [f"{t}:1" for t in bos] + ["$B:1"] + [f"{t}:1" for t in eos])
        tk.post_processor = tokenizers.processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, tk.token_to_id(t)) for t in dict.fromkeys(bos + eos)])
        tk.save(os.path.join(folder, "tokenizer.json"))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "add_bos_token": self.add_bos,
               "add_eos_token": self.add_eos, "clean_up_tokenization_spaces": False}
        for name, content in (("tokenizer_config.json", cfg), ("special_tokens_map.json", names)):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, ensure_ascii=False)
