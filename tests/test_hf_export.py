"""Exports that look like Hub models (card, trained positions), fill-mask output equal to transformers'
pipeline, tokenizer copies that take only tokenizer files, and damaged directories as one-line errors."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from safetensors.numpy import load_file
from test_load_anywhere import TABLE, TRAINED_LENGTH

from bert_jax.cli import main
from bert_jax.data.tokenizer import WORD_START
from bert_jax.inference import fill_mask, pretrained
from bert_jax.models.bert import BertForPreTraining
from bert_jax.metrics_log import read_metrics

TEXTS = ["모든 국민은 [MASK] 앞에 평등하다.", "서울은 한국의 [MASK]이다.", "[MASK]의 장군이 바다에서 [MASK]을 하였다."]
TOKENIZER_FILES = ["bert_jax_tokenizer.json", "special_tokens_map.json", "spm.model", "spm.vocab",
                   "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def workdir(sharded_workdirs):
    return sharded_workdirs["fsdp8"]


@pytest.fixture(scope="module")
def export(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "bert-ko-tiny"
    assert main(["export-hf", "--workdir", workdir, "--output", str(out), "--language", "ko", "en",
                 "--license", "mit"]) == 0
    return out


def test_fill_mask_gives_the_pipelines_tokens_strings_and_scores(workdir, export):
    ours = pretrained.load(workdir)
    bare = ours.tokenizer.token_to_id(WORD_START)
    k = 8
    pipe = transformers.pipeline("fill-mask", model=str(export), top_k=k + 1)
    for text, predictions in zip(TEXTS, fill_mask.fill_mask(ours, TEXTS, top_k=k)):
        reference = pipe(text)
        reference = [reference] if isinstance(reference[0], dict) else reference
        assert len(reference) == len(predictions) == text.count("[MASK]")
        for theirs, mine in zip(reference, predictions):
            theirs = [c for c in theirs if c["token"] != bare][:k]  # the bare '▁' is never a candidate
            assert [(c["token"], c["token_str"], c["sequence"]) for c in mine] == [
                (c["token"], c["token_str"], c["sequence"]) for c in theirs]
            np.testing.assert_allclose([c["score"] for c in mine], [c["score"] for c in theirs], atol=1e-4)
            assert not any(WORD_START in c["token_str"] or WORD_START in c["sequence"] for c in mine)


def test_word_start_pieces_show_without_the_marker_and_the_bare_marker_is_never_offered(export):
    model = pretrained.load(str(export))
    vocab = model.tokenizer.vocab
    bare = vocab.index(WORD_START)
    word = next(i for i, piece in enumerate(vocab) if piece.startswith(WORD_START) and len(piece) > 2)
    bias = model.params["mlm_bias"].copy()
    bias[bare], bias[word] = 60.0, 50.0  # the bare marker would win, the word come second
    model.params = dict(model.params, mlm_bias=bias)
    single, several = fill_mask.fill_mask(model, [TEXTS[1], TEXTS[2]], top_k=3)
    top = single[0][0]
    assert top["token"] == word and top["token_str"] == vocab[word][1:]
    assert top["sequence"] == f"서울은 한국의 {vocab[word][1:]}이다." and top["score"] < 0.01  # '▁' took ~1
    assert all(c["token"] != bare for per_mask in single + several for c in per_mask)
    assert several[1][0]["sequence"].startswith("[CLS][MASK]의 장군이")  # several masks keep special tokens


def test_model_card_fields_parse_with_huggingface_hub(workdir, export):
    card = ModelCard.load(export / "README.md")
    assert card.data.language == ["ko", "en"] and card.data.license == "mit"
    assert card.data.pipeline_tag == "fill-mask" and card.data.library_name == "transformers"
    last_eval = {}
    for row in read_metrics(workdir):
        last_eval.update({k: v for k, v in row.items() if k.startswith("eval/")})
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": round(last_eval["eval/mlm_acc"], 6),
                       "perplexity": round(last_eval["eval/perplexity"], 6)}
    assert {r.dataset_name for r in card.data.eval_results} == {"ko.txt"}
    assert card.data.model_name == "bert-ko-tiny"
    for line in ("- corpus: ko.txt", "- steps: 2", f"- global batch: 16 sequences of {TRAINED_LENGTH} tokens",
                 f"{TRAINED_LENGTH} positions", "- tokenizer: unigram, 100 tokens", "pair task nsp"):
        assert line in card.text, line


def test_the_export_declares_the_trained_positions_and_transformers_agrees_on_logits(workdir, export, tmp_path,
                                                                                       capsys):
    hf_config = json.load(open(export / "config.json"))
    assert hf_config["max_position_embeddings"] == TRAINED_LENGTH
    assert transformers.AutoTokenizer.from_pretrained(str(export)).model_max_length == TRAINED_LENGTH
    assert load_file(str(export / "model.safetensors"))["bert.embeddings.position_embeddings.weight"].shape == (
        TRAINED_LENGTH, 32)
    ours = pretrained.load(workdir)
    assert ours.config.max_position_embeddings == TABLE
    reference = transformers.BertForPreTraining.from_pretrained(str(export)).eval()
    ids = np.array([[2] + list(range(5, 5 + TRAINED_LENGTH - 2)) + [3], [2, 10, 4, 11, 3] + [0] * 27], np.int32)
    mask = (ids != 0).astype(np.int32)
    segments = np.zeros_like(ids)
    mlm, nsp = BertForPreTraining(ours.config).apply({"params": ours.params}, ids, mask, segments)
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                        token_type_ids=torch.tensor(segments).long())
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(mlm)[real], out.prediction_logits.numpy()[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(nsp), out.seq_relationship_logits.numpy(), atol=1e-4)
    assert main(["export-hf", "--workdir", workdir, "--output", str(tmp_path / "full"), "--keep-positions"]) == 0
    assert f"hf upload USER/MODEL {tmp_path / 'full'}" in capsys.readouterr().out
    assert json.load(open(tmp_path / "full" / "config.json"))["max_position_embeddings"] == TABLE
    assert json.load(open(tmp_path / "full" / "tokenizer_config.json"))["model_max_length"] == TABLE


def _hub_like_directory(export, root):
    """A Hugging Face model directory as the Hub ships it: other frameworks' weights beside ours."""
    shutil.copytree(export, root)
    for name in ("tf_model.h5", "flax_model.msgpack", "rust_model.ot", "model.onnx", "training_args.bin"):
        (root / name).write_bytes(b"\0" * 1024)
    (root / "onnx").mkdir()
    (root / "onnx" / "model.onnx").write_bytes(b"\0")
    return root


def test_only_tokenizer_files_are_copied_and_links_out_of_the_directory_are_refused(export, tmp_path, capsys):
    source = _hub_like_directory(export, tmp_path / "hub")
    assert main(["import-hf", "--input", str(source), "--output", str(tmp_path / "imported")]) == 0
    assert sorted(os.listdir(tmp_path / "imported" / "tokenizer")) == TOKENIZER_FILES
    assert main(["export-hf", "--workdir", str(tmp_path / "imported"), "--output", str(tmp_path / "again")]) == 0
    assert sorted(os.listdir(tmp_path / "again")) == sorted(TOKENIZER_FILES + ["README.md", "config.json",
                                                                               "model.safetensors"])
    capsys.readouterr()
    outside = tmp_path / "elsewhere.json"
    shutil.move(source / "special_tokens_map.json", outside)
    (source / "special_tokens_map.json").symlink_to(outside)
    assert main(["import-hf", "--input", str(source), "--output", str(tmp_path / "linked")]) == 2
    err = capsys.readouterr().err
    assert f"{source / 'special_tokens_map.json'} is a symbolic link to {outside}, outside {source}" in err
    assert not (tmp_path / "linked").exists()


def test_a_hugging_face_cache_snapshot_imports_through_its_links(export, tmp_path):
    repo = tmp_path / "models--someone--bert-ko"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, name in enumerate(sorted(os.listdir(export))):
        shutil.copy(export / name, repo / "blobs" / f"blob{index}")
        (snapshot / name).symlink_to(f"../../blobs/blob{index}")
    assert main(["import-hf", "--input", str(snapshot), "--output", str(tmp_path / "imported")]) == 0
    copied = tmp_path / "imported" / "tokenizer" / "tokenizer.json"
    assert not copied.is_symlink() and copied.read_bytes() == (export / "tokenizer.json").read_bytes()


def _damage(directory, kind):
    if kind == "truncated weights":
        data = (directory / "model.safetensors").read_bytes()
        (directory / "model.safetensors").write_bytes(data[:len(data) // 2])
        return "model.safetensors", "damaged safetensors file"
    if kind in ("config without hidden_size", "config sizes disagree with the weights"):
        config = json.load(open(directory / "config.json"))
        if kind == "config without hidden_size":
            del config["hidden_size"]
            expected = "no hidden_size"
        else:
            config["intermediate_size"] = 128
            expected = (f"bert.encoder.layer.0.intermediate.dense.bias has shape (64,) but {directory / 'config.json'} "
                        f"implies (128,)")
        json.dump(config, open(directory / "config.json", "w"))
        return ("model.safetensors" if "disagree" in kind else "config.json"), expected
    if kind in ("invalid JSON in config.json", "invalid JSON in tokenizer.json"):
        name = kind.rsplit(" ", 1)[1]
        (directory / name).write_text((directory / name).read_text()[:-20])
        return name, ("not valid JSON (" if name == "config.json" else "not a valid tokenizer file (EOF while parsing")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated weights", "config without hidden_size", "invalid JSON in config.json",
                                  "invalid JSON in tokenizer.json", "config sizes disagree with the weights"])
def test_damaged_model_directories_are_one_line_errors_naming_the_file(export, tmp_path, capsys, kind):
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    name, expected = _damage(broken, kind)
    for command in (["import-hf", "--input", str(broken), "--output", str(tmp_path / "out")],
                    ["fill-mask", "--model", str(broken), "서울은 [MASK]이다."]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bert-jax {command[0]}: error: {broken / name}") and expected in err, err
        assert err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


class _RunsCode:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pytorch_pickle_that_would_run_code_is_refused(export, tmp_path, capsys):
    source = tmp_path / "evil"
    shutil.copytree(export, source)
    (source / "model.safetensors").unlink()
    payload = _RunsCode()
    payload.marker = str(tmp_path / "ran")
    torch.save({"bert.embeddings.word_embeddings.weight": payload}, source / "pytorch_model.bin")
    assert main(["import-hf", "--input", str(source), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bert-jax import-hf: error: {source / 'pytorch_model.bin'}: refused") and err.count(
        "\n") == 1, err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
