"""The Flax BERT: shapes, masks, config validation, parameter counts and equality with transformers."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bert_jax import BertConfig, BertForPreTraining, BertModel
from bert_jax.config.defaults import bert_config
from bert_jax.models.bert import attention
from bert_jax.models.hf_weights import params_from_hf, params_to_hf

TINY = BertConfig(vocab_size=101, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                  max_position_embeddings=24, hidden_dropout=0.0, attention_dropout=0.0)


def _hf_config(config: BertConfig) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _batch(config: BertConfig, batch=3, length=16, predictions=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, (batch, length)).astype(np.int32)
    lengths = np.array([length, length - 5, 7])[:batch]
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    segments = ((np.arange(length)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int32)
    positions = np.stack([rng.choice(n, predictions, replace=False) for n in lengths]).astype(np.int32)
    return ids, mask, segments, positions


@pytest.fixture(scope="module")
def hf_and_ours():
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(_hf_config(TINY)).eval()
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return hf, params_from_hf(state, TINY)


def _init_params(config, length=8):
    ids = jnp.ones((2, length), jnp.int32)
    return nn.meta.unbox(BertForPreTraining(config).init(jax.random.key(0), ids)["params"])


def test_forward_shapes_and_dtypes():
    params = _init_params(TINY)
    ids, mask, segments, positions = _batch(TINY)
    mlm, nsp = BertForPreTraining(TINY).apply({"params": params}, ids, mask, segments, positions)
    assert mlm.shape == (3, 5, TINY.vocab_size) and mlm.dtype == jnp.float32
    assert nsp.shape == (3, 2) and nsp.dtype == jnp.float32
    seq, pooled = BertModel(TINY).apply({"params": params["bert"]}, ids, mask, segments)
    assert seq.shape == (3, 16, 32) and pooled.shape == (3, 32)


def test_every_parameter_has_logical_axis_names():
    boxed = BertForPreTraining(TINY).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)


def test_padding_does_not_change_real_tokens():
    params = _init_params(TINY)
    ids, mask, segments, _ = _batch(TINY)
    model = BertModel(TINY)
    seq, pooled = model.apply({"params": params["bert"]}, ids, mask, segments)
    garbage = np.where(mask == 0, 77, ids)
    seq2, pooled2 = model.apply({"params": params["bert"]}, garbage, mask, segments)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(seq)[real], np.asarray(seq2)[real], atol=1e-6)
    np.testing.assert_allclose(pooled, pooled2, atol=1e-6)
    # The same sentence alone (no padding) gives the same vectors as inside a padded batch.
    n = int(mask[2].sum())
    alone, _ = model.apply({"params": params["bert"]}, ids[2:3, :n], mask[2:3, :n], segments[2:3, :n])
    np.testing.assert_allclose(alone[0], seq[2, :n], atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (dict(hidden_size=30, num_heads=4), "not divisible"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(vocab_size=-3), "vocab_size must be a positive integer"),
    (dict(dtype="float64"), "dtype must be one of"),
    (dict(attention_dropout=1.0), "attention_dropout must be in"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **overrides)


def test_config_rejects_unknown_fields_and_long_sequences():
    with pytest.raises(ValueError, match="unknown model config field"):
        BertConfig.from_dict({"hidden_sise": 8})
    params = _init_params(TINY)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=24"):
        BertModel(TINY).apply({"params": params["bert"]}, jnp.ones((1, 25), jnp.int32))


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_parameter_count_matches_transformers(size):
    fields = dict(bert_config(**{"tiny": dict(num_layers=2, hidden_size=128),
                                 "base": dict(num_layers=12, hidden_size=768)}[size]).model)
    fields["vocab_size"] = 30522
    config = BertConfig.from_dict(fields)
    shapes = jax.eval_shape(lambda: BertForPreTraining(config).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32)))
    ours = sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))
    with torch.device("meta"):
        reference = transformers.BertForPreTraining(_hf_config(config)).num_parameters()
    assert ours == reference
    assert size != "base" or ours == 110_106_428


def test_logits_match_transformers_with_padding(hf_and_ours):
    hf, params = hf_and_ours
    ids, mask, segments, positions = _batch(TINY)
    mlm, nsp = BertForPreTraining(TINY).apply({"params": params}, ids, mask, segments, positions)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                 token_type_ids=torch.tensor(segments).long())
    ref_mlm = np.take_along_axis(out.prediction_logits.numpy(), positions[..., None], axis=1)
    assert np.abs(np.asarray(mlm) - ref_mlm).max() < 1e-4
    assert np.abs(np.asarray(nsp) - out.seq_relationship_logits.numpy()).max() < 1e-4


def test_bert_model_matches_transformers(hf_and_ours):
    hf, params = hf_and_ours
    ids, mask, segments, _ = _batch(TINY)
    seq, pooled = BertModel(TINY).apply({"params": params["bert"]}, ids, mask, segments)
    with torch.no_grad():
        out = hf.bert(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                      token_type_ids=torch.tensor(segments).long())
    real = mask.astype(bool)
    assert np.abs(np.asarray(seq)[real] - out.last_hidden_state.numpy()[real]).max() < 1e-4
    assert np.abs(np.asarray(pooled) - out.pooler_output.numpy()).max() < 1e-4


def test_round_trip_is_exact_and_loads_into_transformers(hf_and_ours):
    hf, params = hf_and_ours
    state = params_to_hf(params, TINY)
    again = params_from_hf(state, TINY)
    jax.tree.map(np.testing.assert_array_equal, params, again)
    fresh = transformers.BertForPreTraining(_hf_config(TINY))
    fresh.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    for name, tensor in hf.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name].numpy(), tensor.numpy())


def test_scanned_model_is_the_same_function(hf_and_ours):
    _, params = hf_and_ours
    scanned = dataclasses.replace(TINY, scan_layers=True, remat=True)
    state = params_to_hf(params, TINY)
    scanned_params = params_from_hf(state, scanned)
    assert scanned_params["bert"]["encoder"]["layers"]["query"]["kernel"].shape == (2, 32, 4, 8)
    ids, mask, segments, positions = _batch(TINY)
    a = BertForPreTraining(TINY).apply({"params": params}, ids, mask, segments, positions)
    b = BertForPreTraining(scanned).apply({"params": scanned_params}, ids, mask, segments, positions)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a, b)
    np.testing.assert_array_equal(params_to_hf(scanned_params, scanned)["cls.predictions.bias"],
                                  state["cls.predictions.bias"])


def test_bfloat16_compute_is_close_to_float32(hf_and_ours):
    _, params = hf_and_ours
    ids, mask, segments, positions = _batch(TINY)
    f32 = BertForPreTraining(TINY).apply({"params": params}, ids, mask, segments, positions)
    bf16 = BertForPreTraining(dataclasses.replace(TINY, dtype="bfloat16")).apply(
        {"params": params}, ids, mask, segments, positions)
    assert all(bool(jnp.isfinite(x).all()) for x in bf16)
    # Measured: max abs difference 0.0036 (MLM logits of magnitude <= 0.37) and 0.0001 (NSP).
    assert np.abs(np.asarray(bf16[0]) - np.asarray(f32[0])).max() < 0.02
    assert np.abs(np.asarray(bf16[1]) - np.asarray(f32[1])).max() < 0.02


def test_explicit_attention_path_equals_fused():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 3, 4)), jnp.float32) for _ in range(3))
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1] * 6], bool)[:, None, None, :]
    fused = attention(q, k, v, mask)
    # With a keep probability of ~1 the dropout path reduces to plain softmax attention.
    explicit = attention(q, k, v, mask, dropout_rate=1e-9, dropout_rng=jax.random.key(0), implementation="explicit")
    np.testing.assert_allclose(fused, explicit, atol=1e-5)


def test_dropout_is_active_only_when_not_deterministic():
    config = dataclasses.replace(TINY, hidden_dropout=0.1, attention_dropout=0.1)
    params = _init_params(config)
    ids, mask, segments, positions = _batch(config)
    model = BertForPreTraining(config)
    det = model.apply({"params": params}, ids, mask, segments, positions)
    det2 = model.apply({"params": params}, ids, mask, segments, positions)
    drop = model.apply({"params": params}, ids, mask, segments, positions, deterministic=False,
                       rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(det[0], det2[0])
    assert np.abs(np.asarray(det[0]) - np.asarray(drop[0])).max() > 1e-3


def test_add_bias_has_the_gradients_of_plus():
    from bert_jax.models.bert import add_bias

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7))
    bias = jax.random.normal(jax.random.PRNGKey(1), (7,))
    cotangent = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 7))
    ours = jax.grad(lambda x, b: jnp.sum(add_bias(x, b) * cotangent), argnums=(0, 1))(x, bias)
    plain = jax.grad(lambda x, b: jnp.sum((x + b) * cotangent), argnums=(0, 1))(x, bias)
    np.testing.assert_allclose(add_bias(x, bias), x + bias)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
