"""Exports a model as a Hugging Face BERT directory that looks like a Hub model, to a local
directory or a URL (`bert_jax.fs`: built locally, then uploaded).

Writes `config.json`, `model.safetensors` (BertForPreTraining weights), the tokenizer
(`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`, plus our own files so
bert-jax loads the directory too) and a README.md model card made with `huggingface_hub.ModelCard`
(language, license, data, training settings and eval metrics of the workdir). A model pretrained
here at sequence length L declares L positions (the rows beyond L were never trained) unless the
caller keeps the whole table.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from bert_jax import fs
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.inference import hf, pretrained
from bert_jax.models import hf_weights

POSITIONS = "bert.embeddings.position_embeddings.weight"
MARKER = "config.json"  # present: a complete export (uploaded last to a URL)


@dataclasses.dataclass
class TrainingRecord:
    """What a directory says about how its model was trained; empty for a Hugging Face directory."""

    config: dict  # the resolved config.json of `bert-jax pretrain`
    data: dict  # data_metadata.json: the prepared data's settings and counts
    metrics: dict  # the latest value of every eval/* metric in metrics.jsonl
    imported: bool  # the model started from `import-hf` weights

    @property
    def trained_length(self) -> int | None:
        """Positions every row of the table was trained on: the data's sequence length for a model
        pretrained from scratch here; None (unknown) for imports and Hugging Face directories."""
        if self.imported or "data" not in self.config:
            return None
        return int(self.config["data"]["max_seq_length"])


def read_record(directory: str) -> TrainingRecord:
    """The training record of a pretraining workdir (or an empty one for other directories);
    `directory` may be a URL."""
    from bert_jax import metrics_log

    def optional_json(name: str) -> dict:
        path = os.path.join(directory, name)
        return hf.read_json(path) if fs.exists(path) else {}

    is_workdir = fs.exists(os.path.join(directory, "checkpoints"))
    metrics: dict = {}
    if is_workdir:
        for row in metrics_log.read_metrics(directory):
            metrics.update({k: v for k, v in row.items() if k.startswith("eval/")})
    return TrainingRecord(optional_json("config.json") if is_workdir else {}, optional_json("data_metadata.json"),
                          metrics, fs.exists(os.path.join(directory, hf.IMPORTED_MODEL)))


def export_hf(model: pretrained.Pretrained, output: str, card: str, positions: int | None = None,
              done=lambda stage: None) -> None:
    """Writes `model` as a transformers BERT directory into the local directory `output`, keeping
    the first `positions` rows of the position table (None: all of them). `done(stage)` is called
    as each stage finishes (weights converted, weights written, tokenizer and card written)."""
    from safetensors.numpy import save_file

    config = model.config
    if positions is not None:
        config = dataclasses.replace(config, max_position_embeddings=min(positions, config.max_position_embeddings))
    hf_json = hf.hf_config(config, model.tokenizer.pad_id)  # raises for what transformers cannot represent
    state = hf_weights.params_to_hf(model.params, model.config)
    state[POSITIONS] = state[POSITIONS][:config.max_position_embeddings]
    for tied in hf_weights.TIED_HF_NAMES:  # transformers re-ties these on load
        state.pop(tied)
    done("converted")
    os.makedirs(output, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
              os.path.join(output, "model.safetensors"), metadata={"format": "pt"})
    done("model.safetensors")
    tok = model.tokenizer
    with open(os.path.join(output, "config.json"), "w") as f:
        json.dump(hf_json, f, indent=2)
    write_tokenizer(tok, output, config.max_position_embeddings)
    with open(os.path.join(output, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    done("tokenizer and card")


def write_tokenizer(tok: tokenizer_lib.Tokenizer, output: str, max_length: int) -> None:
    """Writes the files transformers' AutoTokenizer reads (tokenizer.json and its config, the special
    tokens map, `model_max_length`) with our own tokenizer files into `output`."""
    tokenizer_lib.copy_files(tok.directory, output)
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    with open(os.path.join(output, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(output, "tokenizer_config.json"), "w") as f:
        json.dump(special | {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                             "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
                             "clean_up_tokenization_spaces": False}, f, indent=2)


def model_card(model: pretrained.Pretrained, record: TrainingRecord, positions: int, language: list[str],
               license: str, name: str) -> str:
    """README.md for the Hub: YAML metadata (language, license, pipeline, eval results as a
    model-index) and what was trained, on what data, how far, and how it scored."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    c, data, train = model.config, record.data, record.config.get("train", {})
    corpus = ", ".join(os.path.basename(p) for p in data.get("arguments", {}).get("inputs", [])) or "local text"
    results = [EvalResult(task_type="fill-mask", task_name="Masked language modelling", dataset_type="text",
                          dataset_name=corpus, dataset_split="eval", metric_type=metric, metric_name=label,
                          metric_value=round(record.metrics[key], 6))
               for key, metric, label in (("eval/mlm_acc", "accuracy", "MLM accuracy"),
                                          ("eval/perplexity", "perplexity", "MLM perplexity"))
               if key in record.metrics]
    metadata = ModelCardData(language=language, license=license, library_name="transformers",
                             pipeline_tag="fill-mask", tags=["bert", "bert-jax", "jax", "flax"],
                             model_name=name, eval_results=results or None)
    lines = [f"# {name}", "",
             f"BERT (L{c.num_layers}/H{c.hidden_size}/A{c.num_heads}, vocabulary {c.vocab_size}, "
             f"{positions} positions) pretrained with bert_jax (JAX/Flax).", "",
             "## Training data", "",
             f"- corpus: {corpus}"]
    if data:
        summary, splits = data.get("summary", {}), data.get("splits", {})
        lines += [f"- {summary.get('documents', '?')} documents, {summary.get('sentences', '?')} sentences, "
                  f"{summary.get('tokens', '?')} tokens",
                  f"- {splits.get('train', {}).get('examples', '?')} training and "
                  f"{splits.get('eval', {}).get('examples', '?')} eval examples of {data.get('max_seq_length')} "
                  f"tokens; pair task {data.get('pair_task')}, {data.get('masking')} masking "
                  f"(p={data.get('mask_prob')})"]
    lines += [f"- tokenizer: {model.tokenizer.model_type}, {model.tokenizer.vocab_size} tokens", "",
              "## Training", "", f"- steps: {model.step}"]
    if train:
        optim = record.config.get("optim", {})
        lines += [f"- global batch: {train.get('global_batch_size')} sequences of "
                  f"{record.config.get('data', {}).get('max_seq_length')} tokens",
                  f"- peak learning rate: {optim.get('learning_rate')}, "
                  f"warmup steps: {optim.get('warmup_steps')}"]
    if record.metrics:
        lines += ["", "## Evaluation (held-out split)", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(record.metrics.items())]
    lines += ["", "## Use", "", "```python", "from transformers import pipeline", "",
              "fill = pipeline('fill-mask', model='PATH_OR_HUB_ID')", "fill('모든 국민은 [MASK] 앞에 평등하다.')",
              "```", ""]
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines)))


def export_directory(directory: str, output: str, language: list[str], license: str,
                     keep_positions: bool = False, progress: bool = False) -> pretrained.Pretrained:
    """`bert-jax export-hf`: loads `directory` (parameters only; a local path or a URL) and exports
    it with its model card to `output`, a local directory (written whole or not at all) or a URL
    (built locally, then uploaded with config.json last). `output` must be new or an empty
    directory: FileExistsError before anything is read. `progress` shows a bar of finished stages."""
    from bert_jax.progress import progress_bar

    directory, output = fs.absolute(directory), fs.absolute(output)
    if fs.exists(os.path.join(output, MARKER)):
        raise FileExistsError(f"--output {output} already holds a model; choose another directory")
    stages = 5 if fs.is_url(output) else 4
    with progress_bar(stages, "stage", progress, desc="export-hf") as bar:
        def done(stage: str) -> None:
            bar.set_postfix_str(stage, refresh=False)
            bar.update()

        with fs.staged_output(output, MARKER, "a model") as staging:
            model = pretrained.load(directory)
            done("loaded")
            record = read_record(directory)
            positions = None if keep_positions else record.trained_length
            kept = model.config.max_position_embeddings if positions is None else positions
            name = os.path.basename(os.path.normpath(output))
            export_hf(model, staging, model_card(model, record, kept, language, license, name), positions, done)
        if fs.is_url(output):
            done("uploaded")
    return model
