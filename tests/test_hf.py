"""Hugging Face interop: export -> transformers (fill-mask, tokenization), import, round trips."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from test_pretrain import pretrain_tiny, tiny_config

from bert_jax.cli import main
from bert_jax.data.pretraining_data import DataSettings, prepare_data
from bert_jax.inference import fill_mask, hf, pretrained
from bert_jax.training.train import train_and_evaluate

KOREAN = ["모든 국민은 [MASK] 앞에 평등하다.", "서울은 한국의 [MASK]이다.", "[MASK]의 장군이 바다에서 [MASK]을 하였다."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, korean_corpus, tokenizer_dir):
    root = tmp_path_factory.mktemp("hf")
    pretrain_tiny(root, korean_corpus, tokenizer_dir, "work")
    assert main(["export-hf", "--workdir", str(root / "work"), "--output", str(root / "export")]) == 0
    return root


def test_transformers_loads_the_export_and_agrees_on_fill_mask(trained):
    export = str(trained / "export")
    ours = pretrained.load(str(trained / "work"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    for cls in (transformers.AutoModelForMaskedLM, transformers.BertForPreTraining):
        assert cls.from_pretrained(export).num_parameters() > 0
    pipe = transformers.pipeline("fill-mask", model=export, tokenizer=tokenizer, top_k=6)
    bare = ours.tokenizer.token_to_id("\u2581")  # never a candidate of ours
    for text, predictions in zip(KOREAN, fill_mask.fill_mask(ours, KOREAN)):
        reference = pipe(text)
        reference = [reference] if isinstance(reference[0], dict) else reference
        assert len(reference) == len(predictions)
        for theirs, mine in zip(reference, predictions):
            theirs = [c for c in theirs if c["token"] != bare][:5]
            assert [c["token"] for c in theirs] == [c["token"] for c in mine]
            np.testing.assert_allclose([c["score"] for c in theirs], [c["score"] for c in mine], atol=1e-4)
    card = open(os.path.join(export, "README.md"), encoding="utf-8").read()
    assert "pipeline_tag: fill-mask" in card and "steps: 8" in card


def test_transformers_tokenizes_korean_like_us(trained):
    ours = pretrained.load(str(trained / "export"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(trained / "export"))
    for text in ["서울은 한국의 역사이다.", "조선의 장군이 바다에서 전쟁을 하였다.", "학생이 도서관에서 과학을 보았다."]:
        assert tokenizer(text)["input_ids"] == [ours.tokenizer.cls_id] + ours.tokenizer.encode(text) + [
            ours.tokenizer.sep_id]
    assert tokenizer.mask_token_id == ours.tokenizer.mask_id == 4


def test_import_export_round_trip_is_exact(trained, tmp_path):
    assert main(["import-hf", "--input", str(trained / "export"), "--output", str(tmp_path / "imported")]) == 0
    assert main(["export-hf", "--workdir", str(tmp_path / "imported"), "--output", str(tmp_path / "again")]) == 0
    a, b = load_file(str(trained / "export" / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def _save_random_hf(directory, cls, tokenizer_source, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=40,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = cls(config).eval()
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(tokenizer_source, name), os.path.join(directory, name))
    return model


def test_import_reproduces_random_transformers_logits(trained, tmp_path):
    source = str(tmp_path / "hf")
    reference = _save_random_hf(source, transformers.BertForPreTraining, str(trained / "export"))
    missing = hf.import_hf(source, str(tmp_path / "w"))
    assert missing == []
    model = pretrained.load(str(tmp_path / "w"))
    from bert_jax.models.bert import BertForPreTraining

    ids = np.array([[2, 10, 4, 11, 3, 12, 13, 3], [2, 20, 21, 4, 3, 0, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    segments = np.array([[0] * 5 + [1] * 3, [0] * 8], np.int32)
    mlm, nsp = BertForPreTraining(model.config).apply({"params": model.params}, ids, mask, segments)
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                        token_type_ids=torch.tensor(segments).long())
    real = mask.astype(bool)
    assert np.abs(np.asarray(mlm)[real] - out.prediction_logits.numpy()[real]).max() < 1e-4
    assert np.abs(np.asarray(nsp) - out.seq_relationship_logits.numpy()).max() < 1e-4


@pytest.mark.parametrize("cls, expected", [
    (transformers.BertForMaskedLM, ["bert.pooler.dense", "cls.seq_relationship"]),
    (transformers.BertModel, ["cls.predictions", "cls.predictions.transform.LayerNorm",
                              "cls.predictions.transform.dense", "cls.seq_relationship"]),
])
def test_import_reports_and_initialises_missing_heads(trained, tmp_path, cls, expected, capsys):
    source = str(tmp_path / "hf")
    _save_random_hf(source, cls, str(trained / "export"))
    assert main(["import-hf", "--input", source, "--output", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert f"initialised (absent from {source}): {', '.join(expected)}" in out
    assert json.load(open(tmp_path / "w" / "imported_model.json"))["initialised"] == expected


def test_import_pytorch_bin_with_weights_only(trained, tmp_path):
    source = tmp_path / "bin"
    reference = _save_random_hf(str(source), transformers.BertForPreTraining, str(trained / "export"))
    (source / "model.safetensors").unlink()
    torch.save(reference.state_dict(), source / "pytorch_model.bin")
    hf.import_hf(str(source), str(tmp_path / "w"))
    word = pretrained.load(str(tmp_path / "w")).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(word, reference.bert.embeddings.word_embeddings.weight.detach().numpy())


def test_continue_pretraining_from_an_import(trained, tmp_path, korean_corpus, tokenizer_dir):
    hf.import_hf(str(trained / "export"), str(tmp_path / "w"))
    prepare_data([str(korean_corpus)], str(tmp_path / "w" / "tokenizer"), str(tmp_path / "data"),
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5, num_shards=2), progress=False)
    config = tiny_config(num_steps=4, eval_every=0)
    config.model.num_layers = 3  # the imported architecture wins over the config's
    train_and_evaluate(config, str(tmp_path / "data"), str(tmp_path / "w"))
    resumed = pretrained.load(str(tmp_path / "w"))
    assert resumed.step == 4 and resumed.config.num_layers == 1


def test_bad_directories_and_mismatches(trained, tmp_path, korean_corpus, capsys):
    assert main(["fill-mask", "--model", str(tmp_path), "서울은 [MASK]이다."]) == 2
    assert "neither a bert-jax workdir" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(trained / "export", broken)
    config = json.load(open(broken / "config.json"))
    config["vocab_size"] = 120
    json.dump(config, open(broken / "config.json", "w"))
    with pytest.raises(ValueError, match="tokenizer has 100 tokens but config.json says vocab_size=120"):
        pretrained.load(str(broken))
    no_tokenizer = tmp_path / "no_tok"
    shutil.copytree(trained / "export", no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    assert main(["import-hf", "--input", str(no_tokenizer), "--output", str(tmp_path / "x")]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
    assert main(["fill-mask", "--model", str(trained / "export"), "마스크가 없다."]) == 2
    assert "has no [MASK]" in capsys.readouterr().err
    # Data prepared with another tokenizer cannot continue an imported model.
    hf.import_hf(str(trained / "export"), str(tmp_path / "w"))
    from bert_jax.data import tokenizer_training

    tokenizer_training.train([str(korean_corpus)], str(tmp_path / "other_tok"), vocab_size=90, model_type="bpe")
    prepare_data([str(korean_corpus)], str(tmp_path / "other_tok"), str(tmp_path / "other_data"),
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5), progress=False)
    with pytest.raises(ValueError, match="different tokenizer"):
        train_and_evaluate(tiny_config(num_steps=2), str(tmp_path / "other_data"), str(tmp_path / "w"))


def test_fill_mask_cli_json(trained, capsys):
    assert main(["fill-mask", "--model", str(trained / "export"), "--json", "--top-k", "2", KOREAN[2]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 1 and len(result[0]) == 2 and len(result[0][0]) == 2
    assert set(result[0][0][0]) == {"score", "token", "token_str", "sequence"}


def test_finetune_starts_from_a_hugging_face_directory_and_from_an_import(trained, tmp_path):
    from bert_jax.config.defaults import finetune_config
    from bert_jax.training.finetune import Classifier, finetune

    rows = [("서울은 한국의 역사이다.", "가"), ("조선의 장군이 바다에서 전쟁을 하였다.", "나")] * 8
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    config = finetune_config()
    config.train.update(max_length=24, global_batch_size=8, epochs=1, learning_rate=1e-9)
    assert main(["import-hf", "--input", str(trained / "export"), "--output", str(tmp_path / "imported")]) == 0
    expected = pretrained.load(str(trained / "export")).params["bert"]
    for init in (trained / "export", tmp_path / "imported"):
        out = tmp_path / f"ft_{init.name}"
        finetune(str(init), str(tmp_path / "d.tsv"), str(tmp_path / "d.tsv"), str(out), "text", "label",
                 config=config)
        got = Classifier(str(out)).params["bert"]
        for path in (("embeddings", "word_embeddings", "embedding"), ("pooler", "kernel")):
            a, b = got, expected
            for key in path:
                a, b = a[key], b[key]
            np.testing.assert_allclose(a, b, atol=1e-6)  # learning rate ~0: the imported weights remain


def test_copies_of_a_tokenizer_leave_the_source_models_files_behind(trained, tmp_path):
    source = str(tmp_path / "hf")
    _save_random_hf(source, transformers.BertForPreTraining, str(trained / "export"))
    hf.import_hf(source, str(tmp_path / "imported"))
    assert sorted(os.listdir(tmp_path / "imported" / "tokenizer")) == ["special_tokens_map.json", "tokenizer.json",
                                                                      "tokenizer_config.json"]
    model = pretrained.load(source)
    assert main(["export-hf", "--workdir", source, "--output", str(tmp_path / "export")]) == 0
    assert json.load(open(tmp_path / "export" / "config.json")) == hf.hf_config(model.config, model.tokenizer.pad_id)
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    np.testing.assert_array_equal(exported["bert.embeddings.word_embeddings.weight"],
                                  model.params["bert"]["embeddings"]["word_embeddings"]["embedding"])
