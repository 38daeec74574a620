"""
A thin wrapper over sentencepiece: the LLaMA tokenizer, with BOS/EOS handled explicitly.

LLaMA's `tokenizer.model` has bos=1, eos=2, unk=0 and no pad piece; we pad with EOS, which is
harmless because every padded position is masked out of the loss and out of attention results.
"""
import os

import sentencepiece as spm


def find_tokenizer(path):
    """`path` is a tokenizer.model file or a folder holding one (an HF model folder, a run folder)."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no sentencepiece tokenizer at {path} (pass the tokenizer.model file or its folder)")
    return path


class Tokenizer:
    def __init__(self, path):
        self.path = find_tokenizer(path)
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eos_id

    def encode(self, text, bos=False, eos=False):
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts, bos=False, eos=False, num_threads=-1):
        """Many texts at once in sentencepiece's C++ loop (num_threads=-1: all cores; 1 inside a worker pool)."""
        out = self.sp.encode(list(texts), num_threads=num_threads)
        return [([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else []) for ids in out]

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i):
        return self.sp.id_to_piece(int(i))
