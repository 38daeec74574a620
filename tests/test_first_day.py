"""A new user's first mistakes: a missing model, corpus or tokenizer is one line naming the setting, the path and the
command that makes it, never a traceback."""
import subprocess
import sys

import pytest

from conftest import ROOT

CASES = {
    "train without its corpus": (["train.py", f"{ROOT}/configs/pmc.py", "--device=cpu"],
                                 ["data_dir", "data/pmc/meta.json: not found", "python prepare_corpus.py"]),
    "train from a missing model": (["train.py", f"{ROOT}/configs/pmc.py", "--device=cpu", "--data_dir=."],
                                   ["init_from=/models/llama-7b-hf: not found", "HF LLaMA folder", ".gguf"]),
    "fine-tune before pre-training": (["finetune_qa.py", f"{ROOT}/configs/ft_id.py", "--device=cpu"],
                                      ["init_from=out/pmc_llama_7b/hf: not found", "train.py configs/pmc.py"]),
    "eval a missing model": (["eval_qa.py", "--bench=medmcqa", "--init_from=nope/hf"],
                             ["init_from=nope/hf: not found", ".gguf"]),
    "sample a missing model": (["sample.py", "--init_from=nope.gguf"], ["init_from=nope.gguf: not found"]),
    "corpus with a missing tokenizer": (["prepare_corpus.py", "--source=text", "--input=.", "--tokenizer=nope.model",
                                         "--out_dir=out"], ["nope.model"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_first_day_errors_are_one_line(tmp_path, case):
    argv, expected = CASES[case]
    (tmp_path / "data").mkdir()
    if "--data_dir=." in argv:  # a corpus that exists, so that the model is what is missing
        (tmp_path / "meta.json").write_text("{}")
    r = subprocess.run([sys.executable, f"{ROOT}/{argv[0]}", *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    err = r.stderr.strip()
    assert r.returncode != 0 and "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    for part in expected:
        assert part in last, (part, last)
