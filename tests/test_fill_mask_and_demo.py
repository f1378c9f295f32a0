"""fill-mask on a trained workdir, and the demo end to end on the konlpy corpus (few steps)."""

import importlib.util
import os

import numpy as np
import pytest

from bert_jax import demo
from bert_jax.inference import fill_mask, pretrained
from bert_jax.metrics_log import read_metrics


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if importlib.util.find_spec("konlpy") is None:
        pytest.skip("konlpy (the demo extra) is not installed")
    workdir = str(tmp_path_factory.mktemp("demo"))
    metrics = demo.run_demo(workdir, num_steps=24)
    return workdir, metrics


def test_demo_runs_the_whole_workflow(demo_run):
    workdir, metrics = demo_run
    for name in ("corpus.txt", "tokenizer", "data/metadata.json", "model/curves.png", "model/checkpoints/24"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = [r for r in read_metrics(os.path.join(workdir, "model")) if "train/mlm_acc" in r]
    assert rows[-1]["step"] == 24 and "eval/mlm_acc" in metrics
    assert open(os.path.join(workdir, "corpus.txt"), encoding="utf-8").read().count("\n\n") == 21


def test_fill_mask_shapes_scores_and_batching(demo_run):
    workdir, _ = demo_run
    model = pretrained.load(os.path.join(workdir, "model"))
    assert model.step == 24
    texts = ["대한민국의 주권은 [MASK]에게 있다.", "[MASK] 국민은 [MASK] 앞에 평등하다."]
    results = fill_mask.fill_mask(model, texts, top_k=3)
    assert [len(r) for r in results] == [1, 2]
    for per_text in results:
        for candidates in per_text:
            scores = [c["score"] for c in candidates]
            assert len(candidates) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
            pieces = [model.tokenizer.id_to_token(c["token"]) for c in candidates]  # decoded as transformers does
            assert [c["token_str"] for c in candidates] == [p.removeprefix("\u2581").replace("\u2581", " ")
                                                            for p in pieces]
    single = fill_mask.fill_mask(model, texts[0], top_k=3)[0]
    np.testing.assert_allclose([c["score"] for c in single[0]], [c["score"] for c in results[0][0]], atol=1e-5)
    filled = results[0][0][0]
    assert "[MASK]" not in filled["sequence"] and filled["sequence"].startswith("대한민국의 주권은")
    assert "[MASK]" in results[1][0][0]["sequence"]  # the other mask stays
    with pytest.raises(ValueError, match="has no \\[MASK\\]"):
        fill_mask.fill_mask(model, "마스크가 없는 문장이다.")
    with pytest.raises(FileNotFoundError, match="neither a bert-jax workdir"):
        pretrained.load(workdir)
