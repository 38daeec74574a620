"""
A prepared corpus on disk: what prepare_corpus.py writes and train.py reads.

    out_dir/train.bin, val.bin   every document's token ids back to back (BOS + tokens + EOS), uint16, or uint32 for a
                                 vocabulary over 65,536 ids
    out_dir/train.idx, val.idx   int64 offsets, n_docs + 1 of them: document i is bin[idx[i]:idx[i+1]]
    out_dir/meta.json            sizes, dtype, tokenizer, sources, skipped records (prepare_corpus.py's meta)

Written under temporary names and renamed only once everything is written: never a half-written corpus.
"""
import json
import os

import numpy as np

SPLITS = ("train", "val")


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class CorpusWriter:
    """Appends documents to the splits' .bin/.idx under .tmp names; publish() renames them and writes meta.json."""

    def __init__(self, out_dir, dtype):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.dtype = out_dir, dtype
        self.paths = {s: os.path.join(out_dir, s) for s in SPLITS}
        self.bins = {s: open(p + ".bin.tmp", "wb") for s, p in self.paths.items()}
        self.idxs = {s: open(p + ".idx.tmp", "wb") for s, p in self.paths.items()}
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.documents = dict.fromkeys(SPLITS, 0)
        for f in self.idxs.values():
            f.write(np.zeros(1, np.int64).tobytes())

    def add(self, split, ids):
        self.bins[split].write(ids.tobytes())
        self.tokens[split] += len(ids)
        self.documents[split] += 1
        self.idxs[split].write(np.int64(self.tokens[split]).tobytes())

    def publish(self, meta):
        for f in (*self.bins.values(), *self.idxs.values()):
            f.close()
        for p in self.paths.values():
            os.replace(p + ".bin.tmp", p + ".bin")
            os.replace(p + ".idx.tmp", p + ".idx")
        path = os.path.join(self.out_dir, "meta.json")
        with open(path + ".tmp", "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(path + ".tmp", path)


def load_split(data_dir, split):
    """(tokens memmap, offsets array) of a prepared split: document i is tokens[idx[i]:idx[i+1]]."""
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    tokens = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.dtype(meta["dtype"]), mode="r") \
        if meta["splits"][split]["tokens"] else np.zeros(0, dtype=np.dtype(meta["dtype"]))
    idx = np.fromfile(os.path.join(data_dir, f"{split}.idx"), dtype=np.int64)
    return tokens, idx
