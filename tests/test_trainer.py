"""The one trainer and the typed data contract: where a run starts (resume > init-from > scratch)
with real orbax checkpoints, `bert-jax evaluate` from the parameters alone, DataSpec errors naming
the file and field, config fields that follow the data, and batches laid out as the BatchSpec."""

import dataclasses
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from test_pretrain import tiny_config

from bert_jax.data import input_pipeline
from bert_jax.data.spec import BatchSpec, DataSpec
from bert_jax.models.bert import BertConfig
from bert_jax.tasks import pretraining
from bert_jax.training import checkpoint, optim, run_checks, sharding, trainer
from bert_jax.training.checkpoint import Checkpointer


def _read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def _data_dir(workdir: str) -> str:
    return os.path.join(os.path.dirname(workdir), "data")  # where the sharded_workdirs fixture prepared it


@pytest.fixture(scope="module")
def tiny_run():
    """A 1-layer pretraining task on one device (nothing compiled until used)."""
    spec = DataSpec.synthetic(vocab_size=40, max_seq_length=8, max_predictions_per_seq=2)
    model = BertConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                       max_position_embeddings=8)
    tx, schedule = optim.make_optimizer(tiny_config().optim, 10)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    return trainer.setup(pretraining.PretrainingTask(model, spec), mesh, sharding.axis_rules(tiny_config().mesh), tx,
                         schedule, global_batch_size=8)


def _constant(value):
    return lambda params: jax.tree.map(lambda p: np.full(p.shape, value, p.dtype), params)


def _leaves(params) -> set[float]:
    return {float(v) for leaf in jax.tree.leaves(jax.device_get(params)) for v in np.unique(leaf)}


def test_a_run_starts_from_its_checkpoint_then_init_from_then_scratch(tiny_run, tmp_path):
    directory = str(tmp_path / "checkpoints")
    fresh = jax.device_get(tiny_run.init(jax.random.fold_in(jax.random.PRNGKey(5), 1)).params)
    scratch = trainer.restore_or_init(tiny_run, Checkpointer(directory, 2, create=False), seed=5)
    assert scratch.source == "scratch" and int(scratch.state.step) == 0 and scratch.extra == {}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(scratch.state.params), fresh)
    started = trainer.restore_or_init(tiny_run, Checkpointer(directory, 2, create=False), 5, _constant(0.5))
    assert started.source == "init-from" and int(started.state.step) == 0 and _leaves(started.state.params) == {0.5}
    assert started.state.params["mlm_bias"].sharding == tiny_run.state_shardings.params["mlm_bias"]
    checkpointer = Checkpointer(directory, 2)
    saved = started.state.replace(step=started.state.step + 3, params=_constant(0.25)(started.state.params))
    checkpointer.save(3, saved, jax.random.PRNGKey(9), {"history": [1, 2]})
    checkpointer.close()
    resumed = trainer.restore_or_init(tiny_run, Checkpointer(directory, 2), 5, _constant(0.5))
    assert resumed.source == "resume" and int(resumed.state.step) == 3 and resumed.extra == {"history": [1, 2]}
    assert _leaves(resumed.state.params) == {0.25}
    np.testing.assert_array_equal(resumed.rng, jax.random.PRNGKey(9))


def test_a_checkpoint_of_another_model_is_a_one_line_error(tiny_run, tmp_path):
    wider = pretraining.PretrainingTask(BertConfig(vocab_size=40, hidden_size=32, num_layers=1, num_heads=2,
                                                   intermediate_size=32, max_position_embeddings=8),
                                        tiny_run.task.spec)
    other = trainer.setup(wider, tiny_run.mesh, tiny_run.rules, *optim.make_optimizer(tiny_config().optim, 10), 8)
    checkpointer = Checkpointer(str(tmp_path / "c"), 2)
    checkpointer.save(1, other.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(0))
    checkpointer.close()
    with pytest.raises(ValueError, match=r"^--workdir w: checkpoint 1 does not fit the config \(.*\); use a new"):
        trainer.restore_or_init(tiny_run, Checkpointer(str(tmp_path / "c"), 2), 0, workdir="w")


def test_a_batch_of_another_layout_is_named_before_the_first_step(tiny_run, tmp_path):
    start = trainer.restore_or_init(tiny_run, Checkpointer(str(tmp_path / "c"), 2, create=False), seed=0)
    bad = tiny_run.task.batch_spec.zeros(8) | {"masked_lm_ids": np.zeros((8, 3), np.int32)}
    checkpointer = Checkpointer(str(tmp_path / "c"), 2, create=False)
    with pytest.raises(ValueError) as error:
        trainer.fit(tiny_run, start, iter([bad]), trainer.Cadence(1, 1, 0, 1), checkpointer, str(tmp_path),
                    trainer.Hooks(), describe="pretraining", nonfinite_hint="")
    assert str(error.value) == ("the first training batch['masked_lm_ids'] is int32[8, 3], the batch spec says "
                                "int32[8, 2]")
    assert not os.path.exists(tmp_path / "c")  # no step ran, nothing was saved


def test_evaluate_loads_the_parameters_only_and_gives_the_training_setups_metrics(sharded_workdirs, tmp_path,
                                                                                  monkeypatch):
    workdir = sharded_workdirs["fsdp8"]
    data_dir = _data_dir(workdir)
    spec = DataSpec.read(data_dir)
    config = ml_collections.ConfigDict(_read_json(os.path.join(workdir, "config.json")))
    run = pretraining.setup(config, spec)  # the training setup, as `evaluate` was before: optimizer, train step
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), 3)
    state, _, _ = checkpointer.restore(run.abstract_state)
    checkpointer.close()
    config.train.eval_steps = 0
    reference = pretraining.evaluate(run.task, run.eval_step, state.params, run.mesh, config, data_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate built part of the training setup")

    for module, name in ((optim, "make_optimizer"), (pretraining, "make_optimizer"), (trainer, "setup"),
                         (pretraining, "setup")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(checkpoint.Checkpointer, "restore", refuse)  # the whole train state's restore
    result = pretraining.evaluate_workdir(workdir, data_dir)
    assert result.pop("step") == 2 and set(result) == set(reference) >= {"eval/mlm_loss", "eval/nsp_acc"}
    for key in reference:
        assert result[key] == pytest.approx(reference[key], rel=1e-5), key
    # A mesh this machine does not have (fsdp=16 on 8 devices): data parallel over the devices it has.
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)
    saved = _read_json(moved / "config.json")
    saved["mesh"].update(data=1, fsdp=16, tensor=1)
    (moved / "config.json").write_text(json.dumps(saved))
    elsewhere = pretraining.evaluate_workdir(str(moved), data_dir)
    for key in reference:
        assert elsewhere[key] == pytest.approx(reference[key], rel=1e-5), key
    # --mask-prob: the run's own rate gives the same figures, another rate other masks, one the
    # data's 5 slots cannot hold is refused
    assert pretraining.evaluate_workdir(workdir, data_dir, mask_prob=config.data.mask_prob) == result | {"step": 2}
    assert pretraining.evaluate_workdir(workdir, data_dir, mask_prob=0.08)["eval/mlm_loss"] != result["eval/mlm_loss"]
    with pytest.raises(ValueError, match=r"^--mask-prob=0.4 masks up to 12 tokens of a 32-token example but the "
                                         r"data holds 5 masked slots"):
        pretraining.evaluate_workdir(workdir, data_dir, mask_prob=0.4)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("max_predictions_per_seq"), "field 'max_predictions_per_seq' is missing"),
    (lambda m: m.update(max_predictions_per_seq="5"), "field 'max_predictions_per_seq' must be an integer, got '5'"),
    (lambda m: m.update(max_predictions_per_seq=64), "field 'max_predictions_per_seq' must be >= 1 and <= 32, got 64"),
    (lambda m: m.update(vocab_size=True), "field 'vocab_size' must be an integer, got True"),
    (lambda m: m["special_ids"].pop("[MASK]"), "field 'special_ids.[MASK]' is missing"),
    (lambda m: m["splits"]["eval"].pop("examples"), "field 'splits.eval.examples' is missing"),
    (lambda m: m["splits"]["train"]["files"][1].update(examples=-1),
     "field 'splits.train.files.1.examples' must be >= 0, got -1"),
    (lambda m: m.update(masking="sometimes"), "field 'masking' must be one of dynamic, static, got 'sometimes'"),
    (lambda m: m["tokenizer"].pop("fingerprint"), "field 'tokenizer.fingerprint' is missing"),
])
def test_a_bad_metadata_json_is_a_one_line_error_naming_file_and_field(sharded_workdirs, tmp_path, edit, message):
    values = _read_json(os.path.join(_data_dir(sharded_workdirs["fsdp8"]), "metadata.json"))
    edit(values)
    (tmp_path / "metadata.json").write_text(json.dumps(values))
    with pytest.raises(ValueError) as error:
        DataSpec.read(str(tmp_path))
    assert str(error.value) == f"{tmp_path}/metadata.json: {message}"


def test_the_spec_holds_what_prepare_data_recorded_and_batches_follow_the_batch_spec(sharded_workdirs):
    data_dir = _data_dir(sharded_workdirs["fsdp8"])
    spec = DataSpec.read(data_dir)
    recorded = _read_json(os.path.join(data_dir, "metadata.json"))
    assert (spec.max_seq_length, spec.max_predictions_per_seq, spec.vocab_size) == (32, 5, 100)
    assert spec.special_ids == recorded["special_ids"]
    assert spec.tokenizer_fingerprint == recorded["tokenizer"]["fingerprint"]
    assert [spec.splits[s].examples for s in ("train", "eval")] == [recorded["splits"][s]["examples"]
                                                                    for s in ("train", "eval")]
    layout = spec.batch_spec()
    assert layout == BatchSpec.pretraining(32, 5) and layout.shapes(4)["masked_lm_weights"] == ((4, 5), np.float32)
    train = next(input_pipeline.train_batches(data_dir, spec, 4, 1, seed=0, mask_prob=0.15, shuffle_buffer=8))
    layout.check(train)
    for batch in input_pipeline.eval_batches(data_dir, spec, 4, 2, seed=0, mask_prob=0.15):
        layout.check(batch)
    with pytest.raises(ValueError, match=r"batch\['masked_lm_ids'\] is int32\[4, 6\], the batch spec says "
                                         r"int32\[4, 5\]"):
        layout.check(train | {"masked_lm_ids": np.zeros((4, 6), np.int32)})


def test_config_fields_that_repeat_the_data_follow_it_and_old_configs_still_resume(sharded_workdirs):
    workdir = sharded_workdirs["fsdp8"]
    spec = DataSpec.read(_data_dir(workdir))
    saved = _read_json(os.path.join(workdir, "config.json"))  # written with explicit 32 / 5
    config = tiny_config()
    config.update_from_flattened_dict({"data.max_seq_length": 0, "data.max_predictions_per_seq": 0,
                                       "model.max_position_embeddings": 64, "train.num_steps": 2,
                                       "train.eval_every": 0, "train.eval_steps": 1, "train.log_every": 2,
                                       "optim.warmup_steps": 1, "mesh.data": 1, "mesh.fsdp": 8})
    model = pretraining.resolve_model_config(config, spec)
    resolved = pretraining._resolved_config(config, saved["data_dir"], model, spec)
    assert resolved["data"]["max_seq_length"] == 32 and resolved["data"]["max_predictions_per_seq"] == 5
    assert run_checks.compare_with_saved(saved, resolved, step=2) == []
    config.data.max_predictions_per_seq = 7
    with pytest.raises(ValueError, match=r"config.data.max_predictions_per_seq=7 but the data was prepared with "
                                         r"max_predictions_per_seq=5 \(metadata.json\); use 0 to follow the data"):
        pretraining.resolve_model_config(config, spec)
    # static data holds masks made at its own rate: another rate is refused, not ignored
    static = dataclasses.replace(spec, masking="static")
    with pytest.raises(ValueError, match=r"^config.data.mask_prob=0.4 but the data holds masks made at "
                                         r"mask_prob=0.15 \(static masking, metadata.json\)"):
        pretraining.check_mask_prob(0.4, static, "config.data.mask_prob")
    pretraining.check_mask_prob(0.15, static, "config.data.mask_prob")
    # a masking rate the data's slots cannot hold would be capped silently: refused, naming the fix
    config.data.update(max_predictions_per_seq=0, mask_prob=0.2)
    with pytest.raises(ValueError, match=r"^config.data.mask_prob=0.2 masks up to 6 tokens of a 32-token example but "
                                         r"the data holds 5 masked slots \(metadata.json\); prepare it with "
                                         r"--mask-prob 0.2$"):
        pretraining.resolve_model_config(config, spec)
