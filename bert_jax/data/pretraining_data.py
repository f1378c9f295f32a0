"""`prepare-data`: documents -> NSP/SOP instances -> (optionally masked) TFRecord shards + metadata.json.

Documents stream from the corpus readers into fixed-size chunks; each chunk is tokenized and
turned into serialised examples by a worker process with its own seed (derived from the chunk
index), and the main process writes the results in chunk order, so the output is identical for
any `--workers`. At most `2 * workers + 2` chunks are in flight, so memory does not grow with
the corpus. Everything is written into a staging directory that is renamed when complete.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import random
import sys
import threading
import time
from collections import Counter, deque
from typing import Iterator

import numpy as np

from bert_jax import fs
from bert_jax.data import corpus, instances, masking, tokenizer as tokenizer_lib
from bert_jax.data.records import frame_records, serialize_columns
from bert_jax.data.spec import FORMAT_VERSION, MASKING as MASKING_MODES, METADATA_FILE


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Arguments of `prepare-data` that shape the examples (all recorded in metadata.json)."""

    max_seq_length: int = 128
    pair_task: str = "nsp"  # nsp, sop or none
    pack_sequences: bool = False  # with pair_task none: fill examples across documents (RoBERTa FULL-SENTENCES)
    short_seq_prob: float = 0.1
    masking: str = "dynamic"  # dynamic: the input pipeline masks; static: masks stored
    dupe_factor: int = 1  # passes over the corpus with different pairs (and masks when static)
    mask_prob: float = 0.15
    max_predictions_per_seq: int = 0  # masked slots per example; 0 = masking.default_slots(length, mask_prob)
    eval_fraction: float = 0.02
    num_shards: int = 0  # train shards; 0 = one per 32 MB of input text (at least 1)
    seed: int = 12345
    docs_per_chunk: int = 128  # a chunk (one worker task, the pool of NSP negatives) closes at this
    chunk_chars: int = 100_000  # many documents or this many characters, whichever comes first
    max_sentence_chars: int = 2000
    text_field: str = "text"

    def __post_init__(self):
        if self.max_predictions_per_seq == 0 and 0.0 < self.mask_prob < 1.0:
            object.__setattr__(self, "max_predictions_per_seq",
                               masking.default_slots(self.max_seq_length, self.mask_prob))

    def validate(self) -> None:
        if not 8 <= self.max_seq_length <= 8192:
            raise ValueError(f"--max-seq-length must be in [8, 8192], got {self.max_seq_length}")
        if self.pair_task not in instances.PAIR_TASKS:
            raise ValueError(f"--pair-task must be one of {instances.PAIR_TASKS}, got {self.pair_task!r}")
        if self.pack_sequences and self.pair_task != "none":
            raise ValueError(f"--pack-sequences needs --pair-task none (got {self.pair_task!r}): packed "
                             "examples cross documents, so they have no sentence pairs")
        if self.masking not in MASKING_MODES:
            raise ValueError(f"--masking must be one of {MASKING_MODES}, got {self.masking!r}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"--short-seq-prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")
        if self.dupe_factor < 1 or self.docs_per_chunk < 2 or self.num_shards < 0 or self.chunk_chars < 1:
            raise ValueError("--dupe-factor must be >= 1, --docs-per-chunk >= 2, --chunk-chars >= 1, "
                             "--num-shards >= 0")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"--mask-prob must be in (0, 1), got {self.mask_prob}")
        if not 0 < self.max_predictions_per_seq <= self.max_seq_length:
            raise ValueError(f"--max-predictions-per-seq must be in [1, --max-seq-length] (0 = the default, "
                             f"ceil(length x --mask-prob)), got {self.max_predictions_per_seq}")
        needed = masking.max_predictions(self.max_seq_length, self.mask_prob)
        if self.masking == "static" and self.max_predictions_per_seq < needed:
            raise ValueError(f"--max-predictions-per-seq {self.max_predictions_per_seq} holds fewer than the up to "
                             f"{needed} tokens that --mask-prob {self.mask_prob} masks at --max-seq-length "
                             f"{self.max_seq_length}: the stored masks would cap the rate (leave it at 0)")


# ---- worker side ---------------------------------------------------------------------------

_worker_tokenizer: tokenizer_lib.Tokenizer | None = None


def _init_worker(tokenizer: str | tokenizer_lib.Tokenizer) -> None:
    """Sets the tokenizer of this process (a directory to load when spawned, the loaded one in-process)."""
    global _worker_tokenizer
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker_tokenizer = tokenizer_lib.load(tokenizer) if isinstance(tokenizer, str) else tokenizer


def _start_method() -> str:
    """'fork' (fast: workers inherit the imports and the loaded tokenizer) when this process runs
    no other threads and has not loaded JAX or TensorFlow, whose thread pools do not survive a
    fork; 'spawn' otherwise (e.g. inside a training script or a notebook)."""
    busy = threading.active_count() > 1 or {"jax", "tensorflow"} & set(sys.modules)
    return "spawn" if busy or "fork" not in multiprocessing.get_all_start_methods() else "fork"


def _tokenize_documents(documents: list[list[str]], tok: tokenizer_lib.Tokenizer, limit: int,
                        stats: Counter) -> tuple[np.ndarray, list[list[int]]]:
    """All tokens of the chunk in one array, and each document's sentence boundaries in it
    (documents without tokens left out); sentences longer than `limit` are split at word starts."""
    sentences = [sentence for document in documents for sentence in document]
    encoded = tok.encode_batch(sentences)
    if found := len(tokenizer_lib.special_strings(sentences)):  # encoded as text, never special ids
        stats["special_token_strings_in_text"] += found
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum()))
    stats["tokens"] += len(flat)
    stats["unk_tokens"] += int((flat == tok.unk_id).sum())
    stats["sentences_without_tokens"] += int((lengths == 0).sum())
    ends, sizes = np.cumsum(lengths).tolist(), lengths.tolist()
    result, k = [], 0
    for document in documents:
        bounds = []
        for end, size in zip(ends[k:k + len(document)], sizes[k:k + len(document)]):
            if not size:
                continue
            start = end - size
            bounds = bounds or [start]
            if size > limit:
                stats["long_sentences_split"] += 1
                bounds.extend(start + cut for cut in instances.split_points(tok.is_word_start[flat[start:end]], limit))
            bounds.append(end)
        k += len(document)
        stats["one_sentence_documents"] += len(bounds) == 2
        if bounds:
            result.append(bounds)
    return flat, result


def process_chunk(job: tuple[str, int, list[list[str]], DataSettings]) -> tuple[list[bytes], Counter]:
    """Tokenizes one chunk of documents; returns its serialised examples, and counts."""
    split, chunk_index, documents, settings = job
    tok = _worker_tokenizer
    stats: Counter = Counter()
    rng = random.Random(f"{settings.seed}/{split}/{chunk_index}")
    max_tokens = settings.max_seq_length - (3 if settings.pair_task != "none" else 2)
    flat, docs = _tokenize_documents(documents, tok, max(1, max_tokens // 2), stats)
    if len(docs) == 1 and settings.pair_task == "nsp":
        stats["documents_in_chunks_without_partner"] += 1
    if settings.pack_sequences:
        made = [example for _ in range(settings.dupe_factor)
                for example in instances.pack_documents(rng.sample(docs, len(docs)), settings.max_seq_length)]
    else:
        made = [inst for _ in range(settings.dupe_factor) for d in range(len(docs))
                for inst in instances.create_instances(docs, d, settings.max_seq_length, settings.short_seq_prob,
                                                       settings.pair_task, rng, stats)]
    rng.shuffle(made)
    stats["examples"] = len(made)
    stats["pair_label_1"] = 0 if settings.pack_sequences else sum(inst[4] for inst in made)
    stats["pair_label_0"] = len(made) - stats["pair_label_1"]
    if not made:
        return [], stats
    columns = (instances.assemble_packed(flat, made, tok.cls_id, tok.sep_id) if settings.pack_sequences
               else instances.assemble(flat, np.array(made, np.int64), tok.cls_id, tok.sep_id))
    ids, counts = columns["input_ids"]
    stats["example_tokens"] = len(ids)
    if settings.masking == "static":
        columns |= _mask_statically(ids, counts, tok, settings, rng)
    else:
        columns = {"input_ids": columns["input_ids"], "segment_ids": columns["segment_ids"],
                   "word_starts": (tok.is_word_start[ids].astype(np.int32), counts),
                   "next_sentence_label": columns["next_sentence_label"]}
    return serialize_columns(columns), stats


def _mask_statically(ids: np.ndarray, counts: np.ndarray, tok, settings: DataSettings,
                     rng: random.Random) -> dict[str, tuple]:
    """Masked input ids and the masked positions, ids and weights of every example, as columns."""
    config = masking.MaskingConfig(settings.mask_prob, settings.max_predictions_per_seq,
                                   tok.vocab_size, tok.mask_id, tok.special_ids)
    rows = np.repeat(np.arange(len(counts)), counts)
    cols = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    dense = np.full((len(counts), settings.max_seq_length), tok.pad_id, np.int32)
    dense[rows, cols] = ids
    real = np.zeros(dense.shape, bool)
    real[rows, cols] = True
    starts = np.zeros(dense.shape, bool)
    starts[rows, cols] = tok.is_word_start[ids]
    masked = masking.mask_batch(dense, real, starts, np.random.default_rng(rng.getrandbits(64)), config)
    slots = np.full(len(counts), settings.max_predictions_per_seq, np.int64)
    return {"input_ids": (masked["input_ids"][rows, cols], counts)} | {
        key: (masked[key].reshape(-1), slots) for key in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")}


# ---- main side -----------------------------------------------------------------------------

def _chunks(documents: Iterator[list[str]], settings: DataSettings, split_counts: dict
            ) -> Iterator[tuple[str, int, list[list[str]], DataSettings]]:
    """Routes documents to train/eval (every round(1/f)-th document to eval, the first included)
    and groups each split into chunks of `docs_per_chunk` documents or `chunk_chars` characters
    (at least 2 documents, so that NSP has negatives)."""
    pending = {"train": [], "eval": []}
    chars = {"train": 0, "eval": 0}
    index = {"train": 0, "eval": 0}
    f = settings.eval_fraction
    for i, document in enumerate(documents):
        split = "eval" if math.ceil((i + 1) * f) > math.ceil(i * f) else "train"
        split_counts[split] += 1
        pending[split].append(document)
        chars[split] += sum(map(len, document))
        if len(pending[split]) == settings.docs_per_chunk or (
                chars[split] >= settings.chunk_chars and len(pending[split]) >= 2):
            yield split, index[split], pending[split], settings
            index[split] += 1
            pending[split], chars[split] = [], 0
    for split in ("train", "eval"):
        if pending[split]:
            yield split, index[split], pending[split], settings


def _ordered_map(jobs, workers: int, tok: tokenizer_lib.Tokenizer):
    """Runs `process_chunk` over `jobs` on `workers` processes, yielding results in job order
    with at most 2 * workers + 2 jobs in flight."""
    if workers <= 1:
        _init_worker(tok)
        for job in jobs:
            yield job, process_chunk(job)
        return
    context = multiprocessing.get_context(_start_method())
    forked = context.get_start_method() == "fork"
    if forked:
        _init_worker(tok)  # the workers inherit it
    with context.Pool(workers, initializer=None if forked else _init_worker,
                      initargs=() if forked else (tok.directory,)) as pool:
        in_flight: deque = deque()
        for job in jobs:
            in_flight.append((job, pool.apply_async(process_chunk, (job,))))
            if len(in_flight) >= 2 * workers + 2:
                done_job, result = in_flight.popleft()
                yield done_job, result.get()
        while in_flight:
            done_job, result = in_flight.popleft()
            yield done_job, result.get()


def _input_bytes(files: list[str]) -> int:
    return sum(fs.size(f) for f in files if not f.startswith("tfds:"))


class _ShardWriters:
    """Lazily opened `train` / `eval` TFRecord shard files in the staging directory."""

    def __init__(self, directory: str, num_shards: dict[str, int]):
        self.directory = directory
        self.num_shards = num_shards
        self.writers: dict = {}
        self.counts = {(split, k): 0 for split, n in num_shards.items() for k in range(n)}

    def write(self, split: str, chunk_index: int, records: list[bytes]) -> None:
        """Deals the records of a chunk round-robin over the shards, starting at the chunk index,
        so that even a one-chunk corpus fills every shard."""
        n = self.num_shards[split]
        for offset in range(min(n, len(records))):
            key = (split, (chunk_index + offset) % n)
            if key not in self.writers:
                self.writers[key] = open(self._path(*key), "wb")
            self.writers[key].write(frame_records(records[offset::n]))
            self.counts[key] += len(records[offset::n])

    def _path(self, split: str, shard: int) -> str:
        return os.path.join(self.directory, f".{split}-{shard:05d}.partial")

    def finish(self) -> dict[str, list[dict]]:
        """Closes the writers and renames non-empty shards to `SPLIT-XXXXX-of-NNNNN.tfrecord`."""
        for writer in self.writers.values():
            writer.close()
        files = {}
        for split, n in self.num_shards.items():
            kept = [k for k in range(n) if self.counts[(split, k)]]
            files[split] = []
            for new_index, k in enumerate(kept):
                name = f"{split}-{new_index:05d}-of-{len(kept):05d}.tfrecord"
                os.rename(self._path(split, k), os.path.join(self.directory, name))
                files[split].append({"name": name, "examples": self.counts[(split, k)]})
        return files


def prepare_data(inputs: list[str], tokenizer_dir: str, output: str, settings: DataSettings,
                 workers: int = 1, progress: bool = True) -> dict:
    """Writes TFRecord shards and metadata.json into `output` (a local directory or a URL; a
    remote one is uploaded with metadata.json last); returns the metadata."""
    tokenizer_dir, output = fs.absolute(tokenizer_dir), fs.absolute(output)
    settings.validate()
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if fs.exists(os.path.join(output, METADATA_FILE)):
        raise FileExistsError(f"--output {output} already holds prepared data; choose another directory")
    tok = tokenizer_lib.load(tokenizer_dir)
    files = corpus.expand_inputs(inputs)
    total_bytes = _input_bytes(files)
    auto_shards = max(1, min(1024, total_bytes // (32 << 20))) if total_bytes else 16
    train_shards = settings.num_shards or auto_shards
    num_shards = {"train": train_shards, "eval": max(1, round(train_shards * settings.eval_fraction))}
    with fs.staged_output(output, METADATA_FILE, "prepared data") as staging:
        stats, split_documents, shard_files, seconds = _write_shards(
            files, tok, staging, settings, workers, num_shards, total_bytes, progress)
        if stats["documents"] == 0:
            raise ValueError(f"--input {' '.join(inputs)}: the corpus holds no documents")
        if not shard_files["train"]:
            raise ValueError(f"--input {' '.join(inputs)}: no training examples could be made "
                             f"({stats['documents']} documents; too little text for --eval-fraction "
                             f"{settings.eval_fraction}?)")
        tokenizer_lib.copy_files(tokenizer_dir, os.path.join(staging, "tokenizer"))
        metadata = _metadata(tok, settings, files, stats, split_documents, shard_files, seconds, workers)
        if warning := instances.pair_label_warning(metadata["summary"], settings.pair_task):
            print(f"prepare-data: warning: {warning}", file=sys.stderr, flush=True)
        with open(os.path.join(staging, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, ensure_ascii=False, indent=2)
    return metadata


def _write_shards(files, tok, staging, settings, workers, num_shards, total_bytes, progress):
    from tqdm import tqdm

    stats = corpus.CorpusStats()
    split_documents = {"train": 0, "eval": 0}
    writers = _ShardWriters(staging, num_shards)
    documents = corpus.read_documents(files, stats, settings.max_sentence_chars, settings.text_field)
    jobs = _chunks(documents, settings, split_documents)
    tqdm.monitor_interval = 0  # no tqdm monitor thread, so that the workers can be forked
    bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, disable=not progress,
               desc="prepare-data", mininterval=1.0)
    start = time.time()
    for (split, chunk_index, _, _), (records, chunk_stats) in _ordered_map(jobs, workers, tok):
        writers.write(split, chunk_index, records)
        stats.update({f"{split}_{k}" if k in ("examples", "example_tokens") else k: v
                      for k, v in chunk_stats.items()})
        bar.update(stats["bytes_read"] - bar.n)
        bar.set_postfix(docs=stats["documents"], docs_per_s=f"{stats['documents'] / (time.time() - start):.0f}")
    bar.close()
    return stats, split_documents, writers.finish(), time.time() - start


def _metadata(tok, settings, files, stats, split_documents, shard_files, seconds, workers) -> dict:
    splits = {split: {"documents": split_documents[split], "files": entries,
                      "examples": sum(e["examples"] for e in entries)}
              for split, entries in shard_files.items()}
    return {
        "format_version": FORMAT_VERSION,
        "max_seq_length": settings.max_seq_length,
        "max_predictions_per_seq": settings.max_predictions_per_seq,
        "mask_prob": settings.mask_prob,
        "masking": settings.masking,
        "pair_task": settings.pair_task,
        "pack_sequences": settings.pack_sequences,
        "vocab_size": tok.vocab_size,
        "special_ids": tok.special_ids_by_name,
        "tokenizer": {"fingerprint": tok.fingerprint, "model_type": tok.model_type,
                      "directory": "tokenizer"},
        "splits": splits,
        "summary": {
            "documents": stats["documents"], "sentences": stats["sentences"],
            "examples": splits["train"]["examples"] + splits["eval"]["examples"],
            "tokens": stats["tokens"], "unk_share": stats["unk_tokens"] / max(1, stats["tokens"]),
            "seconds": round(seconds, 2), "workers": workers,
            "one_sentence_documents": stats["one_sentence_documents"],
            "pair_labels": instances.pair_label_counts(stats, settings.pair_task),
            "repairs_and_skips": {k: v for k, v in stats.items() if k not in (
                "documents", "sentences", "tokens", "unk_tokens", "bytes_read", "train_examples",
                "eval_examples", "train_example_tokens", "eval_example_tokens", "one_sentence_documents",
                "pair_label_0", "pair_label_1", "forced_random_next")},
        },
        "arguments": dataclasses.asdict(settings) | {"inputs": files},
    }

