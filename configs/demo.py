"""Demo: a small BERT (L2/H128/A2) that learns visibly on 2 CPU cores in a few minutes."""

from bert_jax.default_config import bert_config


def get_config():
    config = bert_config(num_layers=2, hidden_size=128, max_position_embeddings=128)
    config.data.max_seq_length = 128
    config.data.max_predictions_per_seq = 20
    config.data.shuffle_buffer = 2_000
    config.train.global_batch_size = 32
    config.train.num_steps = 600
    config.train.log_every = 50
    config.train.eval_every = 200
    config.train.eval_steps = 10
    config.train.checkpoint_every = 200
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 60
    config.optim.schedule = "cosine"
    return config
