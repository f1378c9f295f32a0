"""The small-budget recipe's options (README, Time to accuracy): pre-LayerNorm layers, sequences
packed across documents, the triangular schedule of the `tiny_budget` preset, and Hugging Face
export exact for every option transformers can represent, a one-line refusal for the one it cannot."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from bert_jax.cli import main
from bert_jax.config.loading import load_config
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.data.instances import assemble_packed, pack_documents
from bert_jax.data.pretraining_data import DataSettings, prepare_data
from bert_jax.inference.hf_export import export_hf
from bert_jax.inference.pretrained import Pretrained
from bert_jax.models.bert import BertConfig, BertForPreTraining, BertModel, EncoderLayer
from bert_jax.training.optim import learning_rate_schedule
from test_data_correctness import _shard_examples

SMALL = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                   max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)


def _perturbed(params, seed=1):
    """Every parameter moved off its initial value (LayerNorm scales and biases included)."""
    leaves, tree = jax.tree.flatten(nn.meta.unbox(params))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _reference_layer(p, x, mask, config, pre_ln):
    """One encoder layer written out from the formulas (post-LN BERT or pre-LN)."""
    def attention(h):
        q, k, v = (jnp.einsum("bsh,hnd->bsnd", h, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
        probs = jax.nn.softmax(jnp.where(mask[:, None, None, :], scores, -1e30), -1)
        context = jnp.einsum("bnqk,bknd->bqnd", probs, v)
        return jnp.einsum("bqnd,nde->bqe", context, p["attention_output"]["kernel"]) + p["attention_output"]["bias"]

    def feed_forward(h):
        h = jax.nn.gelu(h @ p["intermediate"]["kernel"] + p["intermediate"]["bias"], approximate=False)
        return h @ p["output"]["kernel"] + p["output"]["bias"]

    norm = lambda h, name: _layer_norm(h, p[name], config.layer_norm_eps)  # noqa: E731
    if pre_ln:
        x = x + attention(norm(x, "attention_norm"))
        return x + feed_forward(norm(x, "output_norm"))
    x = norm(x + attention(x), "attention_norm")
    return norm(x + feed_forward(x), "output_norm")


@pytest.mark.parametrize("pre_ln", [False, True])
def test_a_layer_computes_its_layernorm_layout(pre_ln):
    config = dataclasses.replace(SMALL, pre_layer_norm=pre_ln)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 32))
    mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2], bool)
    layer = EncoderLayer(config)
    params = _perturbed(layer.init(jax.random.PRNGKey(0), x, mask[:, None, None, :], True)["params"])
    out = layer.apply({"params": params}, x, mask[:, None, None, :], True)
    np.testing.assert_allclose(out, _reference_layer(params, x, mask, config, pre_ln), atol=2e-5)
    other = _reference_layer(params, x, mask, config, not pre_ln)
    assert np.abs(np.asarray(out) - np.asarray(other)).max() > 0.1  # the two layouts really differ


def test_a_pre_ln_encoder_normalises_its_output_once_after_the_last_layer():
    ids = jnp.arange(12).reshape(2, 6) + 5
    post = BertModel(SMALL).init(jax.random.PRNGKey(0), ids)["params"]["encoder"]
    model = BertModel(dataclasses.replace(SMALL, pre_layer_norm=True))
    variables = {"params": _perturbed(model.init(jax.random.PRNGKey(0), ids)["params"])}
    assert set(variables["params"]["encoder"]) == set(post) | {"final_norm"}
    sequence, _, hidden = model.apply(variables, ids, output_hidden_states=True)
    np.testing.assert_allclose(sequence, _layer_norm(hidden[-1], variables["params"]["encoder"]["final_norm"],
                                                     SMALL.layer_norm_eps), atol=1e-5)
    scanned = dataclasses.replace(model.config, scan_layers=True)
    stacked = jax.tree.map(lambda *layers: jnp.stack(layers),
                           *[variables["params"]["encoder"][f"layer_{i}"] for i in range(2)])
    scanned_params = dict(variables["params"], encoder={"layers": stacked,
                                                        "final_norm": variables["params"]["encoder"]["final_norm"]})
    np.testing.assert_allclose(BertModel(scanned).apply({"params": scanned_params}, ids)[0], sequence, atol=1e-5)


def _pretrained(config, tokenizer_dir):
    tok = tokenizer_lib.load(tokenizer_dir)
    config = dataclasses.replace(config, vocab_size=tok.vocab_size)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = _perturbed(BertForPreTraining(config).init(jax.random.PRNGKey(0), ids)["params"])
    return Pretrained(config, jax.device_get(params), tok, 0)


def test_the_budget_recipe_exports_exactly_where_transformers_can_represent_it(tokenizer_dir, tmp_path):
    """The preset's exportable choices (post-LN, no dropout) give transformers' logits within 1e-5."""
    preset = load_config("tiny_budget").model
    config = dataclasses.replace(SMALL, hidden_dropout=preset.hidden_dropout,
                                 attention_dropout=preset.attention_dropout)
    model = _pretrained(config, tokenizer_dir)
    export_hf(model, str(tmp_path / "hf"), "# card\n")
    hf_config = json.load(open(tmp_path / "hf" / "config.json"))
    assert (hf_config["hidden_dropout_prob"], hf_config["attention_probs_dropout_prob"]) == (0.0, 0.0)
    reference = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    ids = np.array([[2, 7, 9, 11, 4, 13, 3, 0], [2, 20, 21, 4, 3, 30, 31, 3]], np.int32)
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32),
              "token_type_ids": np.array([[0] * 8, [0] * 5 + [1] * 3], np.int32)}
    ours = BertForPreTraining(model.config).apply({"params": model.params}, **inputs)
    with torch.no_grad():
        theirs = reference(**{k: torch.tensor(v).long() for k, v in inputs.items()})
    real = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(ours[0])[real], theirs.prediction_logits.numpy()[real], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours[1]), theirs.seq_relationship_logits.numpy(), atol=1e-5)


def test_a_pre_ln_model_is_refused_by_export_before_anything_is_written(tokenizer_dir, tmp_path):
    model = _pretrained(dataclasses.replace(SMALL, pre_layer_norm=True), tokenizer_dir)
    with pytest.raises(ValueError, match=r"^model\.pre_layer_norm=True: transformers' BERT is post-LayerNorm only"):
        export_hf(model, str(tmp_path / "hf"), "# card\n")
    assert not os.path.exists(tmp_path / "hf")


def test_packing_fills_examples_with_whole_sentences_across_documents():
    # documents as sentence boundaries in one flat array: A = 3 + 2 tokens, B = 4, C = 1 + 2, D = 3 + 3
    documents = [[0, 3, 5], [5, 9], [9, 10, 12], [12, 15, 18]]
    # 9 tokens after [CLS]: A + [SEP] (6) leaves no room for B + [SEP] (5); B + C with their [SEP]s fill 9
    assert pack_documents(documents, 10) == [[(0, 5)], [(5, 9), (9, 12)], [(12, 18)]]
    # a document longer than the room left continues, at a sentence boundary, in the next example
    assert pack_documents([[0, 3, 6, 9]], 8) == [[(0, 6)], [(6, 9)]]
    flat = np.arange(100, 118, dtype=np.int32)
    columns = assemble_packed(flat, pack_documents(documents, 10), cls_id=2, sep_id=3)
    ids, counts = columns["input_ids"]
    examples = np.split(ids, np.cumsum(counts)[:-1])
    assert [e.tolist() for e in examples] == [
        [2, 100, 101, 102, 103, 104, 3],
        [2, 105, 106, 107, 108, 3, 109, 110, 111, 3],
        [2, 112, 113, 114, 115, 116, 117, 3]]
    assert counts.max() <= 10
    assert not columns["segment_ids"][0].any() and not columns["next_sentence_label"][0].any()


def test_packing_with_sentence_pairs_is_a_one_line_error_before_any_work(korean_corpus, tokenizer_dir, tmp_path,
                                                                         capsys):
    assert main(["prepare-data", "--input", str(korean_corpus), "--tokenizer", tokenizer_dir,
                 "--output", str(tmp_path / "data"), "--pair-task", "sop", "--pack-sequences"]) == 2
    assert capsys.readouterr().err.strip() == (
        "bert-jax prepare-data: error: --pack-sequences needs --pair-task none (got 'sop'): packed examples cross "
        "documents, so they have no sentence pairs")
    assert not os.path.exists(tmp_path / "data")


def test_packed_data_keeps_every_token_and_fills_the_sequences(tmp_path, korean_corpus, tokenizer_dir):
    """Documents of the test corpus are shorter than 128 tokens: BERT's instance builder leaves one
    short example per document (and truncates sentences at example ends), packing fills them."""
    fills, kept = {}, {}
    tok = tokenizer_lib.load(tokenizer_dir)
    for pack in (False, True):
        out = tmp_path / f"pack{pack}"
        prepare_data([str(korean_corpus)], tokenizer_dir, str(out),
                     DataSettings(max_seq_length=128, max_predictions_per_seq=20, pair_task="none", pack_sequences=pack,
                                  eval_fraction=0.0, short_seq_prob=0.0), progress=False)
        metadata, examples = _shard_examples(str(out))
        assert metadata["pack_sequences"] is pack
        for e in examples:
            ids = e["input_ids"]
            assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and len(ids) <= 128 and not e["segment_ids"].any()
        ordinary = sum(int(np.isin(e["input_ids"], tok.special_ids, invert=True).sum()) for e in examples)
        kept[pack] = ordinary / metadata["summary"]["tokens"]
        if pack:
            documents = korean_corpus.read_text(encoding="utf-8").count("\n\n") + 1
            separators = sum(int((e["input_ids"] == tok.sep_id).sum()) for e in examples)
            assert separators >= documents  # a [SEP] after every document (and at every example's end)
        fills[pack] = np.mean([len(e["input_ids"]) for e in examples]) / 128
    assert kept[True] == 1.0  # nothing truncated, nothing repeated
    assert fills[True] > 0.9 and fills[True] > fills[False] + 0.2, (fills, kept)


def test_the_budget_preset_warms_up_over_100_steps_then_decays_linearly_to_zero():
    config = load_config("tiny_budget")
    optim, steps = config.optim, config.train.num_steps
    schedule = learning_rate_schedule(optim, steps)
    peak, warmup = optim.learning_rate, 100
    assert optim.warmup_steps == warmup and config.data.mask_prob == 0.4
    np.testing.assert_allclose([float(schedule(s)) for s in (0, warmup // 2, warmup, (warmup + steps) // 2, steps)],
                               [0.0, peak / 2, peak, peak / 2, 0.0], rtol=1e-6, atol=1e-9)


def _time_to_accuracy_module():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "time_to_accuracy.py")
    spec = importlib.util.spec_from_file_location("time_to_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mlm_batch(rows, masked):
    """A batch of our layout: `rows` of ids (0 = padding) with `masked` {(row, position): true id}."""
    ids = np.array(rows, np.int32)
    batch = {"input_ids": ids.copy(), "input_mask": (ids != 0).astype(np.int32),
             "masked_lm_positions": np.zeros((len(rows), 3), np.int32),
             "masked_lm_ids": np.zeros((len(rows), 3), np.int32),
             "masked_lm_weights": np.zeros((len(rows), 3), np.float32)}
    slot = {}
    for (row, position), truth in masked.items():
        k = slot[row] = slot.get(row, -1) + 1
        batch["input_ids"][row, position] = 4
        batch["masked_lm_positions"][row, k], batch["masked_lm_ids"][row, k] = position, truth
        batch["masked_lm_weights"][row, k] = 1.0
    return batch


def test_the_count_baselines_that_place_the_context_target_predict_from_the_visible_neighbours():
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    # the training text: "10 11 12" twice, "13 13 13 13" once; a masked training position counts as its text
    train = [_mlm_batch([[2, 10, 11, 12, 3, 0], [2, 10, 11, 12, 3, 0]], {(1, 2): 11}),
             _mlm_batch([[2, 13, 13, 13, 13, 3]], {})]
    evaluation = [_mlm_batch([[2, 10, 11, 12, 3, 0],    # both neighbours seen around 11
                              [2, 10, 11, 12, 3, 0],    # 10 after [CLS] (left alone), 11 before 12 (right alone)
                              [2, 13, 13, 13, 3, 0],    # 13 between 13 and 13
                              [2, 10, 11, 12, 3, 0]],   # both neighbours masked: the most frequent piece
                             {(0, 2): 11, (1, 1): 10, (1, 2): 11, (2, 2): 13, (3, 1): 10, (3, 2): 11, (3, 3): 12})]
    scores = _time_to_accuracy_module().context_baselines(train, evaluation, 20, specials)
    # 13 is the most frequent non-special piece ([CLS] and [SEP] are as frequent and never targets)
    assert scores["context-free"] == pytest.approx(1 / 7)
    # right: row 0, row 1 (both), row 2; row 3: position 1 has [CLS] on the left -> 10 (right),
    # position 2 has masks on both sides -> 13 (wrong), position 3 has [SEP] on the right -> 12 (right)
    assert scores["neighbour counts"] == pytest.approx(6 / 7)
