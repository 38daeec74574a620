# A tiny LLaMA continued-pre-trained on the small real biomedical corpus, on CPU in minutes (the quick start).
# First: python prepare_corpus.py --source text pubtator pubtator \
#   --input ../shared/data/biomed_corpus/craft_pmc_oa_fulltext/txt ../shared/data/biomed_corpus/bc5cdr \
#   ../shared/data/biomed_corpus/ncbi_disease --tokenizer=../shared/data/tokenizer/llama_tokenizer.model \
#   --out_dir=data/biomed --val_fraction=0.02
# Then:  python train.py configs/tiny_pmc.py      (or torchrun --nproc_per_node=2 train.py configs/tiny_pmc.py)
out_dir = "out/tiny_pmc"
init_from = "scratch"
data_dir = "data/biomed"
dim = 128
n_layers = 4
n_heads = 4
n_kv_heads = 2
intermediate_size = 352
block_size = 256
micro_batch_size = 8
global_batch_size = 16
epochs = 2.0
learning_rate = 1e-3  # a from-scratch tiny model wants a far larger lr than the paper's 2e-5 fine-grained update
min_lr = 1e-4
warmup_iters = 20
weight_decay = 0.1
dtype = "float32"
eval_interval = 50
eval_batches = 4
log_interval = 10
ckpt_interval = 100
export_dtype = "float32"
