"""Guards of the accelerator (GPU/TPU) train step that run on CPU: embeddings without scatters into
small or bfloat16 tables, attention implementations that agree, dtype 'auto', the per-backend
switches of `bert_jax.backend` (its host settings: tests/test_platform.py).

The step is traced twice: as it runs here (CPU variant) and with `backend.current` reporting
'gpu' (accelerator variant: plain autodiff gradients, rbg dropout bits), and the HLO is read."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import backend
from bert_jax.config.defaults import bert_config, finetune_config
from bert_jax.models.bert import BertConfig, BertForPreTraining, Embeddings, attention, fused_attention_masking

TINY = BertConfig(vocab_size=211, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                  max_position_embeddings=24, hidden_dropout=0.1, attention_dropout=0.0)
BATCH, SEQ, PREDICTIONS = 8, 16, 5  # 128 tokens: more than the position and type tables have rows


def _ids(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY.vocab_size, (BATCH, SEQ)).astype(np.int32)
    segments = (np.arange(SEQ)[None, :] >= rng.integers(1, SEQ, (BATCH, 1))).astype(np.int32)
    return ids, segments


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lookup", ["gather", "one_hot"])
def test_embedding_sum_equals_nn_embed_lookups(dtype, lookup):
    """The same values as the former nn.Embed lookups (whole table cast, then gathered)."""
    config = dataclasses.replace(TINY, dtype=dtype, embedding_lookup=lookup)
    ids, segments = _ids()
    module = Embeddings(config)
    params = nn.meta.unbox(module.init(jax.random.key(0), ids, segments, True)["params"])

    def embedded(m):
        return m.position_embeddings.add_leading_rows(m.word_embeddings(ids)) + m.token_type_embeddings.select(segments)

    ours = module.apply({"params": params}, method=embedded)
    table = {name: params[name]["embedding"].astype(dtype)
             for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    reference = (table["word_embeddings"][ids] + table["position_embeddings"][np.arange(SEQ)[None, :]]
                 + table["token_type_embeddings"][segments])
    assert ours.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(reference, np.float32))
    tied = module.apply({"params": params}, ours[:, :3], method=Embeddings.attend)
    np.testing.assert_array_equal(np.asarray(tied, np.float32),
                                  np.asarray(jnp.dot(ours[:, :3], table["word_embeddings"].T), np.float32))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_embedding_gradients_equal_those_of_float32_gathers(dtype, tolerance):
    ids, segments = _ids(1)
    module = Embeddings(dataclasses.replace(TINY, dtype=dtype))
    params = nn.meta.unbox(module.init(jax.random.key(0), ids, segments, True)["params"])
    cotangent = jax.random.normal(jax.random.key(1), (BATCH, SEQ, TINY.hidden_size))

    def ours(tables):
        m = module.bind({"params": params | tables})
        x = m.position_embeddings.add_leading_rows(m.word_embeddings(ids)) + m.token_type_embeddings.select(segments)
        return jnp.sum(x.astype(jnp.float32) * cotangent)

    def gathers(tables):
        x = (tables["word_embeddings"]["embedding"][ids] + tables["position_embeddings"]["embedding"][jnp.arange(SEQ)]
             + tables["token_type_embeddings"]["embedding"][segments])
        return jnp.sum(x * cotangent)

    tables = {k: params[k] for k in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    grads = jax.grad(ours)(tables)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance),
                 grads, jax.grad(gathers)(tables))


def test_dtype_auto_is_bfloat16_on_accelerators_and_float32_here():
    assert [backend.compute_dtype_name("auto", p) for p in ("gpu", "tpu", "cpu")] == \
        ["bfloat16", "bfloat16", "float32"]
    assert backend.compute_dtype_name("float32", "gpu") == "float32"
    assert bert_config(2, 64).model.dtype == "auto" and finetune_config().model.dtype == "auto"
    assert dataclasses.replace(TINY, dtype="auto").compute_dtype == jnp.float32  # this backend is CPU


@pytest.mark.parametrize("args, expected", [
    (("auto", "gpu", "bfloat16", 64, False), "cudnn"),
    (("auto", "gpu", "float32", 64, False), "xla"),
    (("auto", "gpu", "bfloat16", 64, True), "explicit"),
    (("auto", "gpu", "bfloat16", 160, False), "xla"),
    (("auto", "tpu", "bfloat16", 64, False), "xla"),
    (("auto", "cpu", "float32", 64, False), "xla"),
    (("xla", "gpu", "bfloat16", 64, False), "xla"),
    (("cudnn", "gpu", "float16", 64, False), "cudnn"),
])
def test_attention_implementation_per_backend(args, expected):
    assert backend.attention_implementation(*args) == expected


@pytest.mark.parametrize("args, message", [
    (("cudnn", "cpu", "bfloat16", 64, False), "needs a GPU, but this backend is cpu"),
    (("cudnn", "gpu", "float32", 64, False), "needs dtype bfloat16 or float16"),
    (("cudnn", "gpu", "bfloat16", 12, False), "multiple of 8"),
    (("cudnn", "gpu", "bfloat16", 64, True), "set attention_dropout=0"),
])
def test_cudnn_where_it_cannot_run_is_a_clear_error(args, message):
    with pytest.raises(ValueError, match=message):
        backend.attention_implementation(*args)


def test_cudnn_on_cpu_fails_at_setup_in_one_line():
    config = dataclasses.replace(TINY, dtype="bfloat16", attention_impl="cudnn")
    with pytest.raises(ValueError) as error:
        BertForPreTraining(config).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    assert str(error.value) == ("config.model.attention_impl='cudnn' needs a GPU, but this backend is cpu "
                                "(or use 'auto' / 'xla')")
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs attention_dropout=0"):
        dataclasses.replace(TINY, attention_impl="cudnn", attention_dropout=0.1)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_attention_implementations_agree(dtype, tolerance):
    """xla with the mask, the cuDNN arguments (sequence lengths) run through XLA, and the explicit
    path (keep probability ~1) give the same outputs on every real query."""
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 16, 4, 8)), dtype) for _ in range(3))
    lengths = np.array([16, 9, 1])
    mask = jnp.asarray(np.arange(16)[None, :] < lengths[:, None])[:, None, None, :]
    outputs = {
        "xla": attention(q, k, v, mask, implementation="xla"),
        "cudnn arguments": jax.nn.dot_product_attention(q, k, v, implementation="xla",
                                                        **fused_attention_masking(mask, "cudnn")),
        "explicit": attention(q, k, v, mask, dropout_rate=1e-9, dropout_rng=jax.random.key(0),
                              implementation="explicit"),
    }
    np.testing.assert_array_equal(fused_attention_masking(mask, "cudnn")["key_value_seq_lengths"], lengths)
    for name, out in outputs.items():
        assert out.shape == q.shape and out.dtype == dtype, name
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(outputs["xla"], np.float32),
                                   atol=tolerance, err_msg=name)


# --- the lowered train step ----------------------------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?([\w.-]+) = (\w+)\[([\d,]*)\]\S* ([\w-]+)\(([^)]*)\)(.*)$", re.M)


def scatters(hlo_text: str) -> list[tuple[str, tuple[int, ...], int]]:
    """(dtype, operand shape, number of scattered indices) of every scatter in HLO text."""
    shapes = {name: tuple(int(d) for d in dims.split(",") if d)
              for name, _, dims, _, _, _ in _INSTRUCTION.findall(hlo_text)}
    found = []
    for _, dtype, dims, op, operands, attributes in _INSTRUCTION.findall(hlo_text):
        if op == "scatter":
            index_shape = shapes[operands.split(",")[1].strip()]
            index_vector_dim = int(re.search(r"index_vector_dim=(\d+)", attributes).group(1))
            count = int(np.prod(index_shape)) // (index_shape[index_vector_dim] if index_vector_dim < len(index_shape)
                                                   else 1)
            found.append((dtype, tuple(int(d) for d in dims.split(",") if d), count))
    return found


def _run(config: BertConfig):
    from bert_jax.training.train import setup

    experiment = bert_config(config.num_layers, config.hidden_size, **{
        f: getattr(config, f) for f in ("vocab_size", "max_position_embeddings", "hidden_dropout",
                                        "attention_dropout", "attention_impl", "dtype", "embedding_lookup", "num_heads",
                                        "intermediate_size")})
    experiment.data.update(max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS)
    experiment.train.update(global_batch_size=BATCH, num_steps=10)
    experiment.optim.update(warmup_steps=2)
    metadata = {"vocab_size": config.vocab_size, "max_seq_length": SEQ,
                "max_predictions_per_seq": PREDICTIONS, "pair_task": "nsp"}
    return setup(experiment, metadata)


def _batch(run):
    from bert_jax.training.sharding import global_batch

    rng = np.random.default_rng(0)
    ids, segments = _ids()
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    host = {"input_ids": ids * mask, "input_mask": mask, "segment_ids": segments * mask,
            "masked_lm_positions": np.tile(np.arange(1, 1 + PREDICTIONS, dtype=np.int32), (BATCH, 1)),
            "masked_lm_ids": rng.integers(5, TINY.vocab_size, (BATCH, PREDICTIONS)).astype(np.int32),
            "masked_lm_weights": np.ones((BATCH, PREDICTIONS), np.float32),
            "next_sentence_labels": rng.integers(0, 2, BATCH).astype(np.int32),
            "example_weights": np.ones(BATCH, np.float32)}
    return global_batch(host, run.mesh)


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def lowered_bf16_step(request):
    """(platform variant, HLO text) of the bf16 train step, attention dropout on and off."""
    original = backend.current
    backend.current = lambda: request.param
    try:
        texts = []
        for attention_dropout in (0.0, 0.1):
            # 'xla': cuDNN attention cannot be traced without cuDNN (its arguments are tested above).
            run = _run(dataclasses.replace(TINY, dtype="bfloat16", attention_dropout=attention_dropout,
                                           attention_impl="xla"))
            texts.append(run.train_step.lower(run.abstract_state, _batch(run), jax.random.PRNGKey(1))
                         .as_text(dialect="hlo"))
    finally:
        backend.current = original
    return request.param, texts


def test_no_scatter_into_bfloat16_or_small_tables(lowered_bf16_step):
    platform, texts = lowered_bf16_step
    found = [scatter for hlo in texts for scatter in scatters(hlo)]
    word_table = (TINY.vocab_size, TINY.hidden_size)
    assert all(dtype == "f32" for dtype, _, _ in found), found
    if platform == "gpu":
        # Only the word-embedding gradient scatters, in float32, with at least a row per token.
        assert {(dtype, shape) for dtype, shape, _ in found} == {("f32", word_table)}
        assert all(shape[0] >= BATCH * SEQ for _, shape, _ in found)
    else:
        # Plus the hand-written cross-entropy gradients: one label per row of [predictions, vocab]
        # and of the NSP logits [batch, 2].
        assert {(shape, indices) for _, shape, indices in found} == {
            (word_table, BATCH * SEQ), ((BATCH * PREDICTIONS, TINY.vocab_size), BATCH * PREDICTIONS),
            ((BATCH, 2), BATCH)}


def test_every_reduction_accumulates_in_float32(lowered_bf16_step):
    """LayerNorm statistics, softmax, the loss, and the gradients of biases and positions (sums
    over batch x length) are float32 reductions in the bf16 step."""
    _, texts = lowered_bf16_step
    reductions = [(dtype, dims) for hlo in texts for _, dtype, dims, op, _, _ in _INSTRUCTION.findall(hlo)
                  if op == "reduce"]
    assert reductions and {dtype for dtype, _ in reductions} <= {"f32", "pred"}, reductions
    assert ("f32", f"{SEQ},{TINY.hidden_size}") in reductions  # the position-embedding gradient


def test_dropout_bits_come_from_rbg_on_accelerators_only(lowered_bf16_step):
    platform, texts = lowered_bf16_step
    assert all(("rng-bit-generator" in hlo) == (platform == "gpu") for hlo in texts)


def test_one_hot_lookup_has_no_embedding_scatter():
    run = _run(dataclasses.replace(TINY, dtype="bfloat16", embedding_lookup="one_hot"))
    hlo = run.train_step.lower(run.abstract_state, _batch(run), jax.random.PRNGKey(1)).as_text(dialect="hlo")
    assert all(shape != (TINY.vocab_size, TINY.hidden_size) for _, shape, _ in scatters(hlo))


def test_bf16_step_compiles_once_and_keeps_float32_state():
    run = _run(dataclasses.replace(TINY, dtype="bfloat16", num_layers=1))
    state, batch = run.init(jax.random.key(0)), _batch(run)
    for _ in range(3):
        state, metrics = run.train_step(state, batch, jax.random.PRNGKey(1))
    assert run.train_step._cache_size() == 1
    assert int(state.step) == 3 and np.isfinite(float(metrics["mlm_loss_sum"]))
    assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {jnp.dtype("float32")}
