"""Pretraining end to end on tiny shards: learning, exact resume, SIGTERM, accumulation, errors."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from bert_jax.cli import main
from bert_jax.config.defaults import bert_config
from bert_jax.data import input_pipeline
from bert_jax.data.pretraining_data import DataSettings, load_metadata, prepare_data
from bert_jax.metrics_log import read_metrics
from bert_jax.training.sharding import global_batch
from bert_jax.training.train import NonFiniteLossError, setup, train_and_evaluate


def tiny_config(**train):
    config = bert_config(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64,
                         max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    config.data.max_seq_length = 32
    config.data.max_predictions_per_seq = 5
    config.data.shuffle_buffer = 64
    config.train.update(dict(global_batch_size=16, num_steps=16, log_every=4, eval_every=8, eval_steps=2,
                             checkpoint_every=8) | train)
    config.optim.update(learning_rate=3e-3, warmup_steps=2)
    return config


def pretrain_tiny(root, korean_corpus, tokenizer_dir, workdir: str) -> None:
    """Prepares tiny shards under `root/data` and pretrains 8 steps into `root/workdir`."""
    prepare_data([str(korean_corpus)], tokenizer_dir, str(root / "data"),
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5, num_shards=2), progress=False)
    train_and_evaluate(tiny_config(num_steps=8, eval_every=0), str(root / "data"), str(root / workdir))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, korean_corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("pretrain") / "data"
    prepare_data([str(korean_corpus)], tokenizer_dir, str(out),
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5, eval_fraction=0.1, num_shards=2,
                              dupe_factor=3), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("runs") / "reference")
    final = train_and_evaluate(tiny_config(), data_dir, workdir)
    return workdir, final


def _without_perf(rows):
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def test_workdir_layout_and_learning(reference_run):
    workdir, final = reference_run
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "curves.png", "data_metadata.json",
                                           "metrics.jsonl", "tensorboard", "tokenizer"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16", "8"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["model"]["vocab_size"] == 100 and config["train"]["num_steps"] == 16
    rows = read_metrics(workdir)
    train = [r for r in rows if "train/mlm_loss" in r]
    assert [r["step"] for r in train] == [4, 8, 12, 16]
    assert [r["step"] for r in rows if "eval/mlm_loss" in r] == [8, 16]
    assert train[-1]["train/mlm_loss"] < train[0]["train/mlm_loss"] - 0.2
    assert final["eval/perplexity"] == pytest.approx(np.exp(final["eval/mlm_loss"]))
    assert {"train/nsp_acc", "train/learning_rate", "train/grad_norm", "perf/tokens_per_s"} <= set(final)


def test_loss_decreases_over_a_few_dozen_steps(tmp_path, data_dir):
    config = tiny_config(num_steps=64, log_every=8, eval_every=0)
    config.optim.learning_rate = 5e-3
    train_and_evaluate(config, data_dir, str(tmp_path / "w"))
    losses = [r["train/mlm_loss"] for r in read_metrics(str(tmp_path / "w")) if "train/mlm_loss" in r]
    assert losses[-1] < losses[0] - 0.4  # from ln(vocab) = 4.6 towards the corpus entropy (~3.8)
    assert read_metrics(str(tmp_path / "w"))[-1]["eval/mlm_acc"] > 0.1  # chance is 0.01
    assert all(b < a + 0.2 for a, b in zip(losses, losses[1:]))


def test_resumed_run_logs_exactly_the_uninterrupted_metrics(tmp_path, data_dir, reference_run):
    reference, _ = reference_run
    workdir = str(tmp_path / "resumed")
    shutil.copytree(reference, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "16"))
    rows = read_metrics(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= 8)
    train_and_evaluate(tiny_config(), data_dir, workdir)
    assert _without_perf(read_metrics(workdir)) == _without_perf(read_metrics(reference))


def test_sigterm_saves_and_the_run_continues_as_if_uninterrupted(tmp_path, data_dir, reference_run, monkeypatch):
    reference, _ = reference_run
    original = input_pipeline.train_batches

    def batches_then_sigterm(*args, **kwargs):
        for index, batch in enumerate(original(*args, **kwargs)):
            if kwargs["start_batch"] + index == 5:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 6 is being prepared
            yield batch

    monkeypatch.setattr(input_pipeline, "train_batches", batches_then_sigterm)
    workdir = str(tmp_path / "preempted")
    train_and_evaluate(tiny_config(), data_dir, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6"]
    monkeypatch.setattr(input_pipeline, "train_batches", original)
    train_and_evaluate(tiny_config(), data_dir, workdir)
    assert _without_perf(read_metrics(workdir)) == _without_perf(read_metrics(reference))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_gradient_accumulation_matches_one_big_step(data_dir):
    metadata = load_metadata(data_dir)
    batch = next(input_pipeline.train_batches(data_dir, metadata, 16, 1, seed=0, mask_prob=0.15,
                                              shuffle_buffer=64))
    results = []
    for accum in (1, 2):
        run = setup(tiny_config(grad_accum_steps=accum), metadata)
        state = run.init(jax.random.PRNGKey(3))
        state, metrics = run.train_step(state, global_batch(batch, run.mesh), jax.random.PRNGKey(0))
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (params1, metrics1), (params2, metrics2) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params1, params2)
    for key in ("mlm_loss_sum", "mlm_weight", "nsp_loss_sum", "grad_norm"):
        assert metrics1[key] == pytest.approx(metrics2[key], rel=1e-5)


def test_pipeline_is_deterministic_and_resumable(data_dir):
    metadata = load_metadata(data_dir)
    kwargs = dict(mask_prob=0.15, shuffle_buffer=64)
    a = list(input_pipeline.train_batches(data_dir, metadata, 64, 30, seed=0, **kwargs))
    b = list(input_pipeline.train_batches(data_dir, metadata, 64, 30, seed=0, **kwargs))
    resumed = list(input_pipeline.train_batches(data_dir, metadata, 64, 4, seed=0, start_batch=26, **kwargs))
    other = list(input_pipeline.train_batches(data_dir, metadata, 64, 30, seed=1, **kwargs))
    for x, y in zip(a, b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    for x, y in zip(a[26:], resumed):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(a[0]["input_ids"], other[0]["input_ids"])
    assert metadata["splits"]["train"]["examples"] < 26 * 64  # the resumed run starts in epoch 2
    assert all(x["input_ids"].shape == (64, 32) and x["masked_lm_weights"].shape == (64, 5) for x in a)


def test_metadata_mismatches_are_clear_errors(data_dir, tmp_path):
    cases = [({"data.max_seq_length": 64}, "config.data.max_seq_length=64 but the data was prepared with"),
             ({"data.max_predictions_per_seq": 9}, "max_predictions_per_seq=9"),
             ({"model.vocab_size": 500}, "vocab_size=500 but the data's vocabulary has 100"),
             ({"train.global_batch_size": 12}, "not divisible by the data-parallel size"),
             ({"data.eval_batch_size": 12}, "eval_batch_size=12 is not divisible"),
             ({"model.max_position_embeddings": 16}, "exceeds max_position_embeddings=16")]
    for overrides, message in cases:
        config = tiny_config()
        for dotted, value in overrides.items():
            section, field = dotted.split(".")
            config[section][field] = value
        with pytest.raises(ValueError, match=message):
            train_and_evaluate(config, data_dir, str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        train_and_evaluate(tiny_config(), str(tmp_path), str(tmp_path / "w"))


def test_missing_and_corrupt_shards_are_named(data_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    shard = broken / "train-00001-of-00002.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = b"\xff" * 64
    shard.write_bytes(bytes(raw))
    metadata = load_metadata(str(broken))
    with pytest.raises(ValueError, match="corrupt shard .*train-00001-of-00002.tfrecord"):
        list(input_pipeline.train_batches(str(broken), metadata, 8, 200, seed=0, mask_prob=0.15,
                                          shuffle_buffer=8))
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="train-00001-of-00002.tfrecord listed in metadata.json is missing"):
        list(input_pipeline.train_batches(str(broken), metadata, 8, 1, seed=0, mask_prob=0.15, shuffle_buffer=8))
    shard.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        list(input_pipeline.train_batches(str(broken), metadata, 8, 1, seed=0, mask_prob=0.15, shuffle_buffer=8))


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    config = tiny_config(num_steps=40, checkpoint_every=2, log_every=2, eval_every=0)
    config.optim.learning_rate = 1e30
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train_and_evaluate(config, data_dir, str(tmp_path / "w"))
    steps = sorted(int(s) for s in os.listdir(tmp_path / "w" / "checkpoints"))
    assert steps and steps[-1] < 40


def test_cli_pretrain_and_evaluate(data_dir, reference_run, tmp_path, capsys):
    workdir, _ = reference_run
    assert main(["evaluate", "--workdir", workdir, "--data", data_dir]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 16 and 0 <= result["eval/mlm_acc"] <= 1
    assert main(["pretrain", "--config", "configs/nope.py", "--data", data_dir, "--workdir", str(tmp_path)]) == 2
    assert "--config configs/nope.py: neither a file nor a packaged config (base, demo" in capsys.readouterr().err
    assert main(["pretrain", "--config", "tiny", "--data", data_dir, "--workdir", str(tmp_path / "x"),
                 "--config.train.bogus=3"]) == 2
    assert "--config.train.bogus: unknown field" in capsys.readouterr().err


def test_train_step_compiles_once(data_dir):
    metadata = load_metadata(data_dir)
    run = setup(tiny_config(), metadata)
    state = run.init(jax.random.PRNGKey(0))
    for batch in input_pipeline.train_batches(data_dir, metadata, 16, 3, seed=0, mask_prob=0.15, shuffle_buffer=64):
        state, _ = run.train_step(state, global_batch(batch, run.mesh), jax.random.PRNGKey(0))
        state = state.replace(metrics=jax.tree.map(lambda x: x * 0, state.metrics))
    assert run.train_step._cache_size() == 1


def test_cross_entropy_and_hits_equal_optax_and_argmax():
    import jax.numpy as jnp
    import optax

    from bert_jax.training.train_step import cross_entropy_and_hits

    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 20, 300)) * 4
    labels = jax.random.randint(jax.random.PRNGKey(1), (6, 20), 0, 300)
    labels = labels.at[0, :5].set(jnp.argmax(logits[0, :5], -1))  # some hits
    nll, hits = cross_entropy_and_hits(logits, labels)
    np.testing.assert_allclose(nll, optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)
    np.testing.assert_array_equal(hits, (jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    weights = jax.random.uniform(jax.random.PRNGKey(2), (6, 20))  # the gradient per row differs
    ours = jax.grad(lambda x: (cross_entropy_and_hits(x, labels)[0] * weights).sum())(logits)
    reference = jax.grad(lambda x: (optax.softmax_cross_entropy_with_integer_labels(x, labels) * weights).sum())(logits)
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    hits_gradient = jax.grad(lambda x: cross_entropy_and_hits(x, labels)[1].sum())(logits)
    np.testing.assert_array_equal(hits_gradient, 0.0)
