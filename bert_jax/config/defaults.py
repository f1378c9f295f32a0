"""The default experiment config; `presets/*.py` pick a model size and override fields."""

import ml_collections


def bert_config(num_layers: int, hidden_size: int, **model_overrides) -> ml_collections.ConfigDict:
    """Full pretraining config for a BERT with `num_layers` layers of width `hidden_size`.

    Heads = hidden_size / 64 and feed-forward = 4 * hidden_size, as in the original BERT family.
    """
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict(dict(
        vocab_size=0,  # 0 = take it from the data's metadata.json (the tokenizer's vocabulary)
        hidden_size=hidden_size,  # width H of every layer
        num_layers=num_layers,  # number of encoder layers L
        num_heads=max(1, hidden_size // 64),  # attention heads A; H must be divisible by A
        intermediate_size=4 * hidden_size,  # feed-forward width
        max_position_embeddings=512,  # longest sequence the position table can embed
        type_vocab_size=2,  # segment ids (sentence A / B)
        hidden_dropout=0.1,  # dropout on embeddings and after attention / feed-forward
        # Dropout on attention probabilities, as in the original BERT. No fused attention kernel
        # has it, so 0.1 makes every layer materialise [batch, heads, length, length] scores,
        # probabilities and a dropout mask (no cuDNN flash attention). 0 is the modern recipe
        # (MosaicBERT, Cramming) and lets attention_impl 'auto' use cuDNN on GPU (README, Performance).
        attention_dropout=0.1,
        layer_norm_eps=1e-12,  # LayerNorm epsilon, as in the reference BERT
        initializer_range=0.02,  # stddev of the truncated-free normal initialiser
        dtype="auto",  # compute dtype; auto = bfloat16 on TPU/GPU, float32 on CPU; params stay float32
        param_dtype="float32",  # parameter (and optimizer state) dtype
        scan_layers=False,  # nn.scan over layers: faster compiles for deep models
        remat=False,  # rematerialise layer activations: less memory, ~30% more compute
        attention_impl="auto",  # auto (cuDNN on GPU when it applies, else XLA), xla or cudnn
        embedding_lookup="gather",  # word embeddings: gather rows, or one_hot matmul (often faster on TPU)
        # LayerNorm before each sublayer plus one after the last layer (Cramming, MosaicBERT): stable at
        # larger learning rates, so short runs learn faster. False = the original post-LN BERT, the only
        # layout transformers' BertModel has: `export-hf` refuses a pre-LN model.
        pre_layer_norm=False,
    ))
    config.model.update(model_overrides)

    config.data = ml_collections.ConfigDict(dict(
        max_seq_length=0,  # tokens per example; 0 = follow the data's metadata.json (else must equal it)
        max_predictions_per_seq=0,  # masked slots per example; 0 = follow the data (else must equal it)
        mask_prob=0.15,  # share of real tokens to predict (dynamic masking)
        shuffle_buffer=10_000,  # examples in the tf.data shuffle buffer
        eval_batch_size=0,  # global eval batch; 0 = the training batch size
    ))

    config.train = ml_collections.ConfigDict(dict(
        global_batch_size=256,  # sequences per optimizer step over all devices and hosts
        num_steps=100_000,  # optimizer steps
        grad_accum_steps=1,  # micro-batches per step (global batch is split into these)
        seed=0,  # seeds parameters, dropout, masking and data order
        log_every=100,  # steps between console / TensorBoard lines
        eval_every=2_000,  # steps between evaluations (0 = only at the end)
        eval_steps=50,  # eval batches per evaluation (0 = the whole eval split)
        checkpoint_every=1_000,  # steps between checkpoints
        max_to_keep=3,  # checkpoints kept in the workdir
        peak_tflops_per_device=0.0,  # for MFU; 0 = look up the device kind, unknown -> no MFU
    ))

    config.optim = ml_collections.ConfigDict(dict(
        name="adamw",  # 'adamw' or 'lamb' (large batches)
        learning_rate=1e-4,  # peak learning rate after warmup
        warmup_steps=10_000,  # linear warmup from 0
        schedule="linear",  # decay after warmup: 'linear' or 'cosine'
        end_lr_factor=0.0,  # final learning rate as a fraction of the peak
        weight_decay=0.01,  # decoupled weight decay, never on LayerNorm or biases
        b1=0.9,  # Adam beta1
        b2=0.999,  # Adam beta2
        eps=1e-6,  # Adam epsilon
        grad_clip_norm=1.0,  # global gradient-norm clipping (0 = off)
    ))

    config.mesh = mesh_config()
    return config


def mesh_config() -> ml_collections.ConfigDict:
    """The device mesh ('data', 'fsdp', 'tensor') and the logical axis rules that place parameters,
    optimizer state and activations on it (bert_jax/training/sharding.py); the same section in
    pretraining and fine-tuning."""
    return ml_collections.ConfigDict(dict(
        data=-1,  # data-parallel axis size; -1 = all remaining devices
        fsdp=1,  # parameters and optimizer state sharded over this axis (ZeRO-3 style)
        tensor=1,  # tensor (model) parallel axis: heads, feed-forward and vocabulary split
        # Flax logical axis rules, (logical axis, mesh axis | tuple of mesh axes | None), in order.
        # Flax takes the first rule whose mesh axes are still unused in a spec, so activations
        # ('batch', 'length', 'embed') shard only the batch, while parameters shard 'embed' over
        # fsdp (ZeRO-3 style) and heads / feed-forward / vocabulary over tensor. None = replicated.
        logical_axis_rules=(
            ("batch", ("data", "fsdp")),
            ("length", None),
            ("embed", "fsdp"),
            ("embed_out", None),
            ("heads", "tensor"),
            ("kv", None),
            ("mlp", "tensor"),
            ("vocab", "tensor"),
            ("position", None),
            ("segment", None),
            ("layers", None),
        ),
    ))


def demo_config() -> ml_collections.ConfigDict:
    """A small BERT (L2/H128/A2) that learns visibly on 2 CPU cores in a few minutes.

    No dropout: the built-in corpus is tiny (140 KB) and the run short, so the demo shows how
    fast the model fits it; real pretraining keeps BERT's 0.1.
    """
    config = bert_config(num_layers=2, hidden_size=128, max_position_embeddings=128,
                         hidden_dropout=0.0, attention_dropout=0.0)
    config.data.update(shuffle_buffer=2_000)
    config.train.update(global_batch_size=32, num_steps=800, log_every=50, eval_every=200, eval_steps=10,
                        checkpoint_every=200)
    config.optim.update(learning_rate=2e-3, warmup_steps=80, schedule="cosine")
    return config


def finetune_config() -> ml_collections.ConfigDict:
    """Settings of `bert-jax finetune`; the architecture comes from the pretrained model, these
    override how it runs (dropout, dtype) and how it trains. `--config.train.epochs=5` etc."""
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        hidden_dropout=0.1,  # BERT's fine-tuning dropout, whatever pretraining used
        attention_dropout=0.1,
        dtype="auto",  # bfloat16 on TPU/GPU, float32 on CPU
        attention_impl="auto",
        remat=False,
    ))
    config.train = ml_collections.ConfigDict(dict(
        max_length=128,  # tokens per example; longer texts are truncated and counted
        global_batch_size=32,  # examples per step over all devices and hosts
        epochs=3,
        learning_rate=5e-5,  # peak, after warmup; then linear decay to 0
        warmup_fraction=0.1,  # share of all steps spent warming up
        weight_decay=0.01,  # never on LayerNorm parameters or biases
        grad_clip_norm=1.0,  # 0 = off
        patience=1,  # epochs without a better eval accuracy before stopping early
        seed=0,  # head initialisation, dropout and example order
        from_scratch=False,  # random weights with the pretrained architecture (a baseline)
        log_every=50,  # steps between train metric lines
        checkpoint_every=500,  # steps between checkpoints (and one after every epoch)
        max_to_keep=2,
    ))
    config.mesh = mesh_config()
    return config
