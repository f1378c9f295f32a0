"""The notebook experience: `bert_jax.load`, the Model object, transformers' argument names on the
Flax modules, lazy imports at `import bert_jax`, and the example notebook run end to end."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

import bert_jax
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.inference import fill_mask as fill_mask_lib, hf_export
from bert_jax.models.bert import BertForPreTraining, BertModel

TEXTS = ["모든 국민은 법 앞에 평등하다.", "국민"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer_dir):
    """A random transformers BertForPreTraining (2 layers, hidden 32, 64 positions) saved with the
    conftest unigram tokenizer as a Hugging Face directory; (directory, the torch model)."""
    tok = tokenizer_lib.load(tokenizer_dir)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
                                     pad_token_id=tok.pad_id, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    model = transformers.BertForPreTraining(config).eval()
    directory = str(tmp_path_factory.mktemp("hf_tiny"))
    model.save_pretrained(directory)
    hf_export.write_tokenizer(tok, directory, 64)
    return directory, model


@pytest.fixture(scope="module")
def model(hf_dir):
    return bert_jax.load(hf_dir[0])


def test_repr_is_short_and_names_the_architecture(model, hf_dir):
    text = repr(model)
    assert len(text) < 300
    assert "L=2, H=32, A=4" in text and f"vocab={model.tokenizer.vocab_size}" in text
    assert f"source={hf_dir[0]!r}" in text and "step=0" in text
    assert model.num_parameters == sum(p.numel() for p in hf_dir[1].parameters())  # tied decoder counted once


def test_tokenizer_call_pads_to_the_longest(model):
    tok = model.tokenizer
    out = model(TEXTS)
    rows = [[tok.cls_id] + tok.encode(t) + [tok.sep_id] for t in TEXTS]
    width = max(map(len, rows))
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(a.shape == (2, width) and a.dtype == np.int32 for a in out.values())
    for i, row in enumerate(rows):
        assert out["input_ids"][i].tolist() == row + [tok.pad_id] * (width - len(row))
        assert out["attention_mask"][i].tolist() == [1] * len(row) + [0] * (width - len(row))
    assert not out["token_type_ids"].any()


def test_tokenizer_call_pairs_max_length_and_truncation(model):
    tok = model.tokenizer
    a, b = tok.encode("국민은"), tok.encode("법 앞에")
    out = model("국민은", "법 앞에", padding="max_length", max_length=20)
    row = [tok.cls_id] + a + [tok.sep_id] + b + [tok.sep_id]
    assert out["input_ids"].shape == (1, 20)
    assert out["input_ids"][0, :len(row)].tolist() == row
    assert out["token_type_ids"][0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (20 - len(row))
    assert model(TEXTS[0], max_length=5)["input_ids"].shape == (1, 5)
    with pytest.raises(ValueError, match="exceed max_length=5"):
        model(TEXTS[0], max_length=5, truncation=False)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(TEXTS[0], max_length=65)
    with pytest.raises(ValueError, match="padding must be one of"):
        model(TEXTS[0], padding="longer")


def test_literal_special_strings_are_text(model):
    ids = model("국민 [SEP] 법")["input_ids"][0].tolist()
    assert ids.count(model.tokenizer.sep_id) == 1  # only the [SEP] the call adds


def test_attention_mask_keyword_equals_positional(model):
    inputs = model(TEXTS)
    encoder = BertModel(model.config)
    variables = {"params": model.params["bert"]}
    by_position = encoder.apply(variables, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    by_name = encoder.apply(variables, **inputs)
    np.testing.assert_array_equal(by_name[0], by_position[0])
    np.testing.assert_array_equal(by_name[1], by_position[1])
    full = {"params": model.params}
    np.testing.assert_array_equal(BertForPreTraining(model.config).apply(full, **inputs)[0],
                                  BertForPreTraining(model.config).apply(full, inputs["input_ids"],
                                                                         input_mask=inputs["attention_mask"],
                                                                         token_type_ids=inputs["token_type_ids"])[0])
    with pytest.raises(TypeError, match="input_mask or attention_mask"):
        encoder.apply(variables, inputs["input_ids"], inputs["attention_mask"], attention_mask=inputs["attention_mask"])


def test_embed_and_mlm_logits_equal_transformers(model, hf_dir):
    inputs = model(TEXTS)
    with torch.no_grad():
        expected = hf_dir[1](**{k: torch.tensor(v, dtype=torch.long) for k, v in inputs.items()},
                             output_hidden_states=True)
    out = model.embed(TEXTS, output_hidden_states=True)
    real = inputs["attention_mask"].astype(bool)
    assert len(out["hidden_states"]) == 3  # embeddings + 2 layers, as transformers
    for ours, theirs in zip(out["hidden_states"], expected.hidden_states):
        np.testing.assert_allclose(ours[real], theirs.numpy()[real], atol=1e-4)
    np.testing.assert_array_equal(out["sequence_output"], out["hidden_states"][-1])
    pooled = hf_dir[1].bert.pooler(expected.hidden_states[-1]).detach().numpy()
    np.testing.assert_allclose(out["pooled_output"], pooled, atol=1e-4)
    logits = model.mlm_logits(inputs)
    assert logits.shape == (2, inputs["input_ids"].shape[1], model.config.vocab_size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[real], expected.prediction_logits.numpy()[real], atol=1e-4)


def test_hidden_states_with_scanned_layers(model):
    from bert_jax.models.hf_weights import params_from_hf, params_to_hf

    scanned_config = dataclasses.replace(model.config, scan_layers=True)
    scanned = params_from_hf(params_to_hf(model.params, model.config), scanned_config)["bert"]
    inputs = model(TEXTS)
    expected = model.embed(inputs, output_hidden_states=True)["hidden_states"]
    _, _, hidden = BertModel(scanned_config).apply({"params": scanned}, **inputs, output_hidden_states=True)
    assert len(hidden) == len(expected)
    for ours, reference in zip(hidden, expected):
        np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-5)


def test_fill_mask_delegates(model):
    texts = ["모든 국민은 [MASK] 앞에 평등하다."]
    assert model.fill_mask(texts, top_k=3) == fill_mask_lib.fill_mask(model.pretrained, texts, top_k=3)


def test_import_is_light_and_names_are_listed():
    code = ("import sys, bert_jax; names = dir(bert_jax); "
            "print(sorted(m for m in ('jax', 'tensorflow', 'flax', 'torch') if m in sys.modules)); print(names); "
            "print(dir(bert_jax.inference))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    for name in ("load", "Model", "BertConfig", "BertModel", "BertForPreTraining", "data", "models", "training",
                 "inference", "config"):
        assert f"'{name}'" in out[1]
    for name in ("pretrained", "fill_mask", "hf_export", "notebook"):  # listed before they are imported
        assert f"'{name}'" in out[2]
    assert set(bert_jax.__all__) >= {"load", "Model", "BertConfig", "BertModel", "BertForPreTraining"}
    assert bert_jax.inference.pretrained.load is not None  # a submodule on attribute access, no import by hand


def test_python_tables_are_checked_like_files():
    from bert_jax.data.finetune_data import label_names, load_table

    rows = [{"text": "가", "label": 2}, {"text": "나", "label": np.int64(10)}]
    table = load_table(rows, ["text"], "label", name="train")
    assert [r["label"] for r in table.rows] == [2, 10] and type(table.rows[1]["label"]) is int
    pandas = pytest.importorskip("pandas")
    frame = load_table(pandas.DataFrame({"text": ["가", "나"], "label": np.array([3, 1])}), ["text"], "label")
    assert frame.rows == [{"text": "가", "label": 3}, {"text": "나", "label": 1}]
    assert type(frame.rows[0]["label"]) is int and frame.path == "data data (DataFrame)"
    assert label_names(frame, "label") == [1, 3] and label_names(frame, "label", ["3", "1"]) == [3, 1]
    with pytest.raises(ValueError, match=r"train data \(dict\): columns of different lengths"):
        load_table({"text": ["a", "b"], "label": [1]}, ["text"], "label", name="train")
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['sentence'\]"):
        load_table({"text": ["a"], "label": [1]}, ["sentence"], "label", name="eval")
    with pytest.raises(ValueError, match="row 2: empty label"):
        load_table([{"text": "a", "label": "x"}, {"text": "b", "label": " "}], ["text"], "label")
    with pytest.raises(TypeError, match="expected a file path, a DataFrame"):
        load_table(42, ["text"], "label")


def test_quickstart_notebook_runs(hf_dir, model, tmp_path, monkeypatch):
    """examples/quickstart.ipynb executed cell by cell on the tiny model (one fine-tuning epoch)."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    from bert_jax.training.finetune import Classifier

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("BERT_JAX_MODEL", hf_dir[0])
    monkeypatch.setenv("BERT_JAX_EPOCHS", "1")
    monkeypatch.setenv("BERT_JAX_FINETUNE_DIR", str(tmp_path / "ft"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(os.path.join(root, "examples", "quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {i: "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))
               for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    assert outputs[1].startswith("bert_jax.Model(L=2, H=32, A=4")
    assert len(outputs[1]) < 300
    width = model(["모든 국민은 법 앞에 평등하다.", "대한민국의 주권은 국민에게 있다."])["input_ids"].shape[1]
    assert outputs[3] == f"{{'input_ids': (2, {width}), 'attention_mask': (2, {width}), 'token_type_ids': (2, {width})}}"
    assert outputs[6] == f"((2, {width}, 32), (2, 32), 3)"
    assert len(outputs[9].splitlines()) == 3
    assert re.search(r"\(\[0, 1\],\s+\{'epoch': 1,", outputs[11])  # fine-tuned from lists of texts and int labels
    with open(tmp_path / "ft" / "config.json") as f:
        assert json.load(f)["train_file"] == "train data (dict)"
    texts = ["서울은 학교의 좋다.", "부산은 문화의 없다.", "국회은 시민의 좋다."]
    predicted, probabilities = Classifier(str(tmp_path / "ft")).predict(texts)
    assert predicted == [[0, 1][k] for k in probabilities.argmax(-1)] and all(type(p) is int for p in predicted)
