"""BERT-Tiny (L2/H128/A2) with the small-budget recipe (README, Time to accuracy: on 2 CPU cores it
reached the unigram level, eval MLM accuracy 0.12, in fewer steps than the original recipe; no run
there got to a context-level accuracy). Prepare its data with
`--pair-task none --pack-sequences --max-seq-length 128`.

Changes from the original BERT recipe (`--config tiny`), the first two screened together in the README:
- pre-LayerNorm layers (`model.pre_layer_norm`): stable at a larger peak learning rate;
- no dropout while pretraining: a short run does not overfit, dropout only slows it (Cramming);
- a triangular schedule, linear warmup over the first half then linear decay to 0 (Cramming's one-cycle);
- sequences packed across documents: short texts such as reviews fill the 128 positions.
A pre-LN model cannot be exported to transformers' BERT (`export-hf` says so); fine-tuning,
fill-mask and evaluation work as for any model.
"""

from bert_jax.config.defaults import bert_config


def get_config():
    config = bert_config(num_layers=2, hidden_size=128, max_position_embeddings=128, pre_layer_norm=True,
                         hidden_dropout=0.0, attention_dropout=0.0)
    config.train.update(global_batch_size=64, num_steps=3_000, eval_every=500, checkpoint_every=1_000)
    config.optim.update(learning_rate=2e-3, warmup_steps=1_500, schedule="linear")
    return config
