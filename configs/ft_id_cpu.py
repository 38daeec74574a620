# The in-domain scenario, small, on CPU in minutes, on ../shared/data:  python finetune_qa.py configs/ft_id_cpu.py
# Training file: PubMedQA PQA-L ori_pqal.json, split 'train' = the 500 records *outside* the official 500 test ids
# (test_ground_truth.json), so PubMedQA test numbers stay clean. MedMCQA's train.json is not available offline and
# its dev.json is the split the paper reports as the MedMCQA test, so this config does not train on MedMCQA at all.
import os

# the data root the tests use: $NANOPMC_DATA, else ../shared/data beside the repository (not the working directory)
_data = os.environ.get("NANOPMC_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
init_from = "out/tiny_pmc/hf"  # train.py configs/tiny_pmc.py writes this; any HF LLaMA folder works
out_dir = "out/ft_id_cpu"
pubmedqa_train = os.path.join(_data, "pubmedqa", "ori_pqal.json")
pubmedqa_split = "train"
block_size = 256  # tiny_pmc's context; longer prompts lose their beginning
micro_batch_size = 8
global_batch_size = 16  # more, smaller steps: a tiny model needs the updates
epochs = 3.0
learning_rate = 2e-3  # a tiny model fine-tunes with a far larger step than LLaMA-7B's 2e-5
min_lr = 2e-4
warmup_iters = 5
dtype = "float32"
log_interval = 5
ckpt_interval = 0
export_dtype = "float32"
lora = False
lora_r = 8
lora_alpha = 8
