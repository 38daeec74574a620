# configs/pmc.py for today's base model: PMC-LLaMA's recipe (one random 512-token window per paper per epoch, global
# batch 128, AdamW lr 2e-5, bf16, FSDP, 5 epochs) on Llama-3-8B. Its tokenizer.json (128,256-token byte-level BPE,
# BOS <|begin_of_text|>) gives a uint32 corpus, so prepare it with this model's folder, not LLaMA-1's:
#
#   python prepare_corpus.py --source=s2orc --input=/data/s2orc --tokenizer=/models/Meta-Llama-3-8B --out_dir=data/pmc_llama3
#   torchrun --nproc_per_node=8 train.py configs/pmc_llama3_8b.py
exec(open("configs/pmc.py").read())  # the paper's settings; the lines below are what differs
out_dir = "out/pmc_llama3_8b"
init_from = "/models/Meta-Llama-3-8B"  # an HF folder (config.json + safetensors + tokenizer.json), or a .gguf file
model_preset = "llama3-8b"  # its shape, for the dry run without the weights
data_dir = "data/pmc_llama3"
tokenizer = "/models/Meta-Llama-3-8B"  # the folder: tokenizer.json + tokenizer_config.json (add_bos_token)
# micro-batch 4 as configs/pmc.py: 23.4 GiB allocated per GPU (memplan.py and the dry run agree to 0.3%: the
# 128k-vocabulary head and 8B weights, gradients kept sharded), a 40 GB card fits
