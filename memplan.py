"""
The memory plan: train.py's peak per-GPU memory for a LLaMA shape, term by term, from the shapes alone.

    python bench.py --what=memplan       # configs/pmc.py (LLaMA-7B on 8 GPUs) in both gradient-sync modes

Bf16 FSDP2 as train.py sets it up (fp32 master weights, gradients and AdamW states; bf16 compute; per-block
sharding), eager kernels. tests/test_gpu_script.py checks the terms by hand and the activation bytes against
autograd's own count; the dry run (dryrun.py: train.py --dry_run=True) measures every term on fake tensors at the
real size and world size; bench.py measures the plan on a GPU.
"""
GiB = 2**30
OVERHEAD_GIB = 3.0  # beyond PyTorch's allocated bytes: CUDA context, NCCL and cuBLAS workspaces, allocator slack


def param_counts(args):
    """(all parameters, one block's, the root's: embeddings, final norm, head), from the shapes."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    block = args.dim * (2 * q + 2 * kv) + 3 * args.dim * args.intermediate_size + 2 * args.dim
    root = args.vocab_size * args.dim * (1 if args.tie_word_embeddings else 2) + args.dim
    return args.n_layers * block + root, block, root


def saved_bytes_per_token(args):
    """Bytes that autograd keeps per token for one block's backward, eager bf16 (tests/test_gpu_script.py counts them
    with saved_tensors_hooks): each RMSNorm its fp32 input, its bf16 normalised value and its output, the next
    linear's input (8 dim, + a fp32 rsqrt); attention's q, k, v after rotation and its output, which is o_proj's input
    (flash attention keeps no T x T matrix, only a fp32 logsumexp per head); SwiGLU's gate, up, silu(gate) and their
    product (8 intermediate); the rotary cos/sin rows cast for q and k (per position, counted per token)."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    norms = 2 * ((4 + 2 + 2) * args.dim + 4)
    attention = 2 * (2 * q + 2 * kv) + 4 * args.n_heads + 4 * 2 * args.head_dim
    return norms + attention + 8 * args.intermediate_size


def gradient_terms(n, world, grad_accum, defer_grad_sync):
    """The fp32 gradients between and in backwards. Reduce-scattered after every micro-step (train.py's default),
    each GPU keeps only its shard, accumulated there from the first micro-step to the optimizer step. Deferred to
    the last micro-step, FSDP2 keeps every parameter's unsharded gradient in the reduce dtype until then; the last
    backward turns it into shards block by block, freeing each block's as its shard appears, so the two are never
    both whole (the dry run: the peak comes as that backward starts). With one micro-step the modes are the same."""
    accumulate = grad_accum > 1
    deferred = accumulate and defer_grad_sync
    return [
        ("fp32 gradient accumulator, unsharded (defer_grad_sync, grad_accum > 1): 4 B/param",
         4 * n if deferred else 0, "always"),
        ("fp32 gradients, sharded: 4 B/param / world", 4 * n / world,
         "always" if accumulate and not defer_grad_sync else "optimizer" if deferred else "backward"),
    ]


def memory_plan(args, world, micro, seq, grad_accum, activation_checkpointing=True, defer_grad_sync=False,
                trainable=None, trainable_tensors=None):
    """Peak bytes PyTorch allocates per GPU in one train.py step (bf16 FSDP2 over `world` GPUs, fp32 master weights
    and AdamW states, micro-batch micro x seq), term by term: -> (terms, peak). Each term is (what, bytes, when):
    'always' (held through the blocks' forward and backward), 'loss' (only while the chunked loss runs), 'backward'
    (only in a block's backward), 'root' (the backward's last act, the root's reduce-scatter, when the blocks'
    checkpoints and gathered parameters are gone: it adds to the step's state alone) or 'optimizer' (only once the
    backward is done). peak = max(always + max(loss, backward), state + root), the state being the master weights,
    AdamW and the gradients. Eager kernels; compiled blocks save less. trainable: the parameters that get gradients
    and AdamW states, added beside a frozen model (LoRA's adapters), in trainable_tensors tensors; default: all."""
    from kernels import LinearCrossEntropy  # torch: imported when planning, not by bench.py's other commands
    n, block, root = param_counts(args)
    n_train = n if trainable is None else trainable
    frozen = n_train < n  # LoRA: no weight gradients for the head and the blocks' base matrices
    tensors = trainable_tensors or (1 if args.tie_word_embeddings else 2) + 9 * args.n_layers + 1
    d, i, V, L, tokens = args.dim, args.intermediate_size, args.vocab_size, args.n_layers, micro * seq
    chunk = min(max(1, LinearCrossEntropy.chunk_elems // V), tokens)
    per_token = saved_bytes_per_token(args)
    ac = activation_checkpointing
    terms = [
        ("fp32 master weights, sharded: 4 B/param / world", 4 * (n + n_train if frozen else n) / world, "always"),
        ("AdamW exp_avg + exp_avg_sq, fp32, sharded: 8 B/param / world, + a fp32 step count per tensor",
         8 * n_train / world + 4 * tensors, "always"),
        *gradient_terms(n_train, world, grad_accum, defer_grad_sync),
        # the root stays gathered (its embeddings and head serve both ends); a block's all-gather output and its
        # unsharded copy-out overlap the block before (the dry run: 1 block computing + 1 arriving)
        ("bf16 parameters gathered: the root + 2 blocks (one computing, the next arriving)", 2 * root + 2 * 2 * block,
         "always"),
        ("activation checkpoints: each block's bf16 input" if ac else "saved activations of every block",
         L * (2 * d if ac else per_token) * tokens, "always"),
        ("loss: fp32 head gradient + its bf16/fp32 temporaries, logit chunks, final norm",
         (0 if frozen else 10 * V * d) + 8 * chunk * V + (2 + 8) * d * tokens, "loss"),
        ("one block recomputed for its backward", per_token * tokens if ac else 0, "backward"),
        ("backward temporaries: activation gradients, a block's bf16 + fp32 weight gradients",
         (4 * d + 6 * i) * tokens + 6 * (block if not frozen else n_train / args.n_layers), "backward"),
        # Llama-3's 128k head and embeddings: 5.9 GiB here, which sets the backward's peak (the dry run)
        ("the root's gradients at its reduce-scatter: bf16 + their fp32 copy, 6 B/param", 0 if frozen else 6 * root,
         "root"),
    ]
    total = {w: sum(b for _, b, when in terms if when == w) for w in ("always", "loss", "backward", "root")}
    state = 4 * (n + n_train if frozen else n) / world + 8 * n_train / world + 4 * tensors + 4 * n_train / world
    return terms, max(total["always"] + max(total["loss"], total["backward"]), state + total["root"])


def largest_micro_batch(args, world, seq, grad_accum, card_gib, overhead_gib=OVERHEAD_GIB, defer_grad_sync=False):
    """The largest micro-batch whose planned peak plus the overhead fits a card of card_gib GiB (0: none fits)."""
    b = 0
    while (memory_plan(args, world, b + 1, seq, grad_accum, defer_grad_sync=defer_grad_sync)[1]
           + overhead_gib * GiB <= card_gib * GiB):
        b += 1
    return b
