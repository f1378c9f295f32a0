"""Test setup: 8 fake CPU devices for mesh code, TensorFlow kept off accelerators, quiet logs."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded

import random  # noqa: E402

import pytest  # noqa: E402

_NOUNS = ["서울", "부산", "한국", "조선", "학교", "도서관", "대학교", "정부", "국회", "법률", "헌법", "시민",
          "역사", "문화", "경제", "과학", "음악", "영화", "바다", "산", "강", "도시", "마을", "사람", "학생",
          "선생님", "의사", "군인", "장군", "왕", "나라", "회사", "시장", "기차", "자동차", "비행기", "전쟁"]
_PARTICLES = ["은", "는", "이", "가", "을", "를", "의", "에서", "으로", "와", "과", "도"]
_ENDINGS = ["이다.", "있다.", "없다.", "되었다.", "하였다.", "만들었다.", "보았다.", "갔다.", "왔다.", "좋다."]


def make_korean_corpus(path, documents=120, seed=0):
    """Writes plain text (a sentence per line, blank line between documents) of Korean sentences."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        topic = rng.choice(_NOUNS)
        for _ in range(rng.randint(1, 9)):
            words = [topic + rng.choice(_PARTICLES)]
            words += [rng.choice(_NOUNS) + rng.choice(_PARTICLES) for _ in range(rng.randint(1, 6))]
            lines.append(" ".join(words) + " " + rng.choice(_ENDINGS))
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def korean_corpus(tmp_path_factory):
    return make_korean_corpus(tmp_path_factory.mktemp("corpus") / "ko.txt")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, korean_corpus):
    from bert_jax.data import tokenizer_training

    out = tmp_path_factory.mktemp("tok") / "unigram"
    tokenizer_training.train([str(korean_corpus)], str(out), vocab_size=100, model_type="unigram")
    return str(out)


@pytest.fixture(scope="session")
def sharded_workdirs(tmp_path_factory, korean_corpus, tokenizer_dir):
    """Pretraining workdirs written with 8 devices, {mesh name: workdir}: fsdp=8 and a 2x2x2
    data/fsdp/tensor mesh; 2 steps each with eval at the end, sequence length 32, a position table of 64."""
    from test_pretrain import tiny_config

    from bert_jax.data.pretraining_data import DataSettings, prepare_data
    from bert_jax.training.train import train_and_evaluate

    root = tmp_path_factory.mktemp("sharded")
    prepare_data([str(korean_corpus)], tokenizer_dir, str(root / "data"),
                 DataSettings(max_seq_length=32, max_predictions_per_seq=5, num_shards=2, eval_fraction=0.05),
                 progress=False)
    workdirs = {}
    for name, mesh in {"fsdp8": dict(data=1, fsdp=8, tensor=1), "mesh222": dict(data=2, fsdp=2, tensor=2)}.items():
        config = tiny_config(num_steps=2, eval_every=0, eval_steps=1, log_every=2)
        config.optim.warmup_steps = 1
        config.model.max_position_embeddings = 64
        config.mesh.update(mesh)
        train_and_evaluate(config, str(root / "data"), str(root / name))
        workdirs[name] = str(root / name)
    return workdirs
