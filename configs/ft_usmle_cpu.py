# The data-efficient USMLE scenario, small, on CPU:  python finetune_qa.py configs/ft_usmle_cpu.py [--lora=True]
# No USMLE train split is available offline: the only USMLE file is sample_200.jsonl, the first 200 records of the
# official *test* file. This config therefore trains on records 100..199 of it (select = "100:200") and the matching
# evaluation must use records 0..99 only (eval_qa.py --bench usmle --limit=100). Numbers from it are a smoke test of
# the pipeline, not a USMLE result.
import os

# the data root the tests use: $NANOPMC_DATA, else ../shared/data beside the repository (not the working directory)
_data = os.environ.get("NANOPMC_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
init_from = "out/tiny_pmc/hf"
out_dir = "out/ft_usmle_cpu"
usmle_train = os.path.join(_data, "medqa_usmle", "sample_200.jsonl")
select = "100:200"
block_size = 256  # tiny_pmc's context; longer prompts lose their beginning
micro_batch_size = 10
global_batch_size = 20
epochs = 3.0
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 2
dtype = "float32"
log_interval = 5
ckpt_interval = 0
export_dtype = "float32"
lora = False
