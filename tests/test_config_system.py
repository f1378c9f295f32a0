"""One config system: `--config.a.b` overrides parsed by ml_collections' config_flags in both
spellings for every command that takes a config, one-line errors naming the field before any work,
flags that are short names for config fields (one default, shown in --help), and the logical axis
rules in `config.mesh` deciding where parameters live."""

import json

import flax.linen as nn
import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from bert_jax import cli
from bert_jax.config import flag_fields
from bert_jax.config.defaults import bert_config, demo_config, finetune_config, mesh_config
from bert_jax.config.loading import config_from_workdir, load_config
from bert_jax.config.validation import validate_pretraining
from bert_jax.training import run_checks, sharding

# What the rules were as the module constant sharding.LOGICAL_RULES before they moved into the config.
FORMER_RULES = (("batch", ("data", "fsdp")), ("length", None), ("embed", "fsdp"), ("embed_out", None),
                ("heads", "tensor"), ("kv", None), ("mlp", "tensor"), ("vocab", "tensor"), ("position", None),
                ("segment", None), ("layers", None))


@pytest.mark.parametrize("field, raw, value", [
    ("train.num_steps", "50", 50), ("optim.learning_rate", "3", 3.0), ("optim.learning_rate", "2e-4", 2e-4),
    ("model.dtype", "bfloat16", "bfloat16"), ("model.remat", "true", True), ("mesh.data", "-1", -1),
    ("mesh.fsdp", "4", 4), ("mesh.logical_axis_rules", "(('batch', 'data'), ('embed', None))",
                            (("batch", "data"), ("embed", None)))])
def test_both_spellings_set_the_typed_value(field, raw, value):
    section, name = field.split(".")
    for tokens in ([f"--config.{field}={raw}"], [f"--config.{field}", raw]):
        config = load_config("tiny", tokens)
        assert config[section][name] == value and type(config[section][name]) is type(value), tokens


def test_bool_fields_take_absl_switches_and_values():
    assert load_config("tiny", ["--config.model.remat"]).model.remat is True
    assert load_config("base", ["--config.model.remat", "false", "--config.train.num_steps", "7"]).train.num_steps == 7
    assert load_config("base", ["--noconfig.model.scan_layers"]).model.scan_layers is False


@pytest.mark.parametrize("tokens, message", [
    (["--config.train.num_steps", "many"], "--config.train.num_steps=many: expected an integer"),
    (["--config.train.num_steps=5.0"], "--config.train.num_steps=5.0: expected an integer"),
    (["--config.optim.learning_rate", "fast"], "--config.optim.learning_rate=fast: expected a number"),
    (["--config.model.remat", "maybe"], "--config.model.remat=maybe: expected true or false"),
    (["--config.train.bogus=3"], "--config.train.bogus: unknown field; train has ['checkpoint_every', 'eval_every', "
                                 "'eval_steps', 'global_batch_size', 'grad_accum_steps', 'log_every', 'max_to_keep', "
                                 "'num_steps', 'peak_tflops_per_device', 'seed']"),
    (["--config.nope.x", "1"], "--config.nope.x: no config section 'nope'"),
    (["--config.train.num_steps.x=1"], "--config.train.num_steps.x: no config section 'num_steps'"),
    (["--train.num_steps=1"], "unrecognized argument '--train.num_steps=1'; config overrides look like "
                              "--config.train.num_steps=1000"),
    (["--config.train.num_steps", "1", "2"], "unrecognized arguments: 2; config overrides look like "
                                             "--config.train.num_steps=1000"),
    (["--config.train.num_steps"], "Missing value for flag --config.train.num_steps"),
])
def test_bad_overrides_are_one_line_naming_the_field(tokens, message):
    with pytest.raises(ValueError) as error:
        load_config("tiny", tokens)
    assert str(error.value) == message


@pytest.mark.parametrize("command", [
    ["pretrain", "--config", "tiny", "--data", "{tmp}/no-data", "--workdir", "{tmp}/w"],
    ["finetune", "--model", "{tmp}/no-model", "--train", "{tmp}/t.tsv", "--eval", "{tmp}/e.tsv", "--workdir", "{tmp}/w"],
    ["demo", "--workdir", "{tmp}/w"],
])
def test_every_config_command_parses_overrides_before_any_work(command, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in command]
    name = argv[0]
    assert cli.main(argv + ["--config.train.seed", "-3x"]) == 2
    assert capsys.readouterr().err == f"bert-jax {name}: error: --config.train.seed=-3x: expected an integer\n"
    assert cli.main(argv + ["--config.train.bogus=1"]) == 2
    assert capsys.readouterr().err.startswith(f"bert-jax {name}: error: --config.train.bogus: unknown field; train has [")
    assert not (tmp_path / "w").exists()  # nothing was written


def test_finetune_flags_are_config_fields_with_the_config_default(capsys):
    base = ["finetune", "--model", "m", "--train", "t.tsv", "--eval", "e.tsv", "--workdir", "w"]

    def config_of(*extra):
        args, unknown = cli.build_parser().parse_known_args(base + list(extra))
        args.overrides = unknown
        return cli.finetune_config_from(args)

    assert config_of().to_dict() == finetune_config().to_dict()  # no flag given: every field keeps its default
    config = config_of("--epochs", "5", "--learning-rate", "1e-3", "--from-scratch", "--batch-size", "8")
    assert (config.train.epochs, config.train.learning_rate, config.train.from_scratch,
            config.train.global_batch_size) == (5, 1e-3, True, 8)
    assert config_of("--epochs", "5", "--config.train.epochs", "7").train.epochs == 7  # the override wins
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    defaults = finetune_config()
    for flag, (field, kind, _) in flag_fields.FINETUNE.items():
        section, name = field.split(".")
        shown = "" if kind is bool else f" (default: {defaults[section][name]})"  # a switch is off by default
        assert f"{flag}{'' if kind is bool else ' ' + flag[2:].upper().replace('-', '_')} " in help_text
        assert f"sets config.{field}{shown}" in help_text, flag
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--help"])
    assert (f"sets config.train.num_steps (default: {demo_config().train.num_steps})"
            in " ".join(capsys.readouterr().out.split()))


def test_flags_with_a_setting_elsewhere_hold_no_default_of_their_own():
    from bert_jax.data.pretraining_data import DataSettings

    commands = cli.build_parser()._subparsers._group_actions[0].choices
    sourced = {(name, action.dest): action for name, command in commands.items() for action in command._actions
               if hasattr(action, "default_source")}
    assert {name for name, _ in sourced} == {"train-tokenizer", "prepare-data", "fill-mask", "finetune", "demo"}
    assert all(action.default is None for action in sourced.values())
    assert {dest: a.default_source() for (name, dest), a in sourced.items() if name == "prepare-data"} == {
        dest: getattr(DataSettings, dest) for (name, dest) in sourced if name == "prepare-data"}
    assert [sourced[("train-tokenizer", dest)].default_source() for dest in ("vocab_size", "model_type", "seed")] == [
        32000, "unigram", 0]  # the keywords of tokenizer_training.train
    assert sourced[("fill-mask", "top_k")].default_source() == 5  # fill_mask.fill_mask's
    args, _ = cli.build_parser().parse_known_args(["prepare-data", "--input", "x", "--tokenizer", "t", "--output", "o"])
    assert cli.data_settings_from(args) == DataSettings()
    args, _ = cli.build_parser().parse_known_args(["prepare-data", "--input", "x", "--tokenizer", "t", "--output", "o",
                                                   "--max-seq-length", "64", "--masking", "static"])
    assert cli.data_settings_from(args) == DataSettings(max_seq_length=64, masking="static")


def test_default_axis_rules_are_the_former_constants_and_survive_json():
    assert sharding.axis_rules(mesh_config()) == FORMER_RULES
    assert finetune_config().mesh.to_dict() == bert_config(2, 128).mesh.to_dict() == mesh_config().to_dict()
    from_json = ml_collections.ConfigDict(json.loads(json.dumps(mesh_config().to_dict())))
    assert sharding.axis_rules(from_json) == FORMER_RULES  # lists back to tuples
    resolved = bert_config(2, 128).to_dict()  # a resumed run compares with its config.json: no change
    assert run_checks.compare_with_saved(json.loads(json.dumps(resolved)), resolved, step=1) == []


def test_a_workdir_written_before_the_rules_gets_the_defaults(tmp_path):
    values = bert_config(2, 128).to_dict()
    del values["mesh"]["logical_axis_rules"]
    values["mesh"]["fsdp"] = 8
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = config_from_workdir(str(tmp_path))
    assert config.mesh.fsdp == 8 and sharding.axis_rules(config.mesh) == FORMER_RULES


@pytest.mark.parametrize("rules, message", [
    ((("embd", "fsdp"),), "rule ('embd', 'fsdp'): the model has no logical axis 'embd' (batch, length, embed, "),
    ((("embed", "fsd"),), "rule ('embed', 'fsd'): no mesh axis 'fsd' (data, fsdp, tensor)"),
    ((("batch", ("data", "model")),), "rule ('batch', ('data', 'model')): no mesh axis 'model'"),
    (("embed",), "rule 'embed' is not a pair (logical axis, mesh axis | tuple of mesh axes | None)"),
])
def test_bad_axis_rules_are_named(rules, message):
    config = demo_config()
    config.mesh.logical_axis_rules = rules
    with pytest.raises(ValueError) as error:
        validate_pretraining(config)
    assert str(error.value).startswith(f"config.mesh.logical_axis_rules: {message}")


def _placed(config) -> dict:
    """{name: (PartitionSpec, shape of one device's shard)} of two parameters of a tiny
    BertForPreTraining on a mesh of the 8 fake devices, placed by the config's axis rules (the
    shardings that jit's out_shardings and orbax's restore use)."""
    from bert_jax.models.bert import BertConfig, BertForPreTraining

    model = BertForPreTraining(BertConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                          intermediate_size=64, max_position_embeddings=16))
    ids, positions = jax.numpy.zeros((1, 16), jax.numpy.int32), jax.numpy.zeros((1, 2), jax.numpy.int32)
    abstract = jax.eval_shape(lambda rng: model.init({"params": rng}, ids, masked_lm_positions=positions)["params"],
                              jax.random.key(0))
    shardings = sharding.logical_shardings(abstract, sharding.make_mesh(dict(config.mesh)),
                                           sharding.axis_rules(config.mesh))
    shapes = nn.meta.unbox(abstract)
    paths = {"words": ("bert", "embeddings", "word_embeddings", "embedding"),  # ('vocab', 'embed')
             "kernel": ("bert", "encoder", "layer_0", "intermediate", "kernel")}  # ('embed', 'mlp')

    def leaf(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    return {name: (leaf(shardings, path).spec, leaf(shardings, path).shard_shape(leaf(shapes, path).shape))
            for name, path in paths.items()}


def test_axis_rules_from_the_config_place_the_parameters():
    mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    assert _placed(load_config("tiny", mesh)) == {"words": (P("tensor", "fsdp"), (32, 16)),
                                                  "kernel": (P("fsdp", "tensor"), (16, 32))}
    # The embedding dimension whole, the vocabulary over fsdp x tensor, feed-forward replicated.
    rules = "(('batch', ('data', 'fsdp')), ('vocab', ('fsdp', 'tensor')), ('embed', None))"
    assert _placed(load_config("tiny", mesh + ["--config.mesh.logical_axis_rules", rules])) == {
        "words": (P(("fsdp", "tensor"), None), (16, 32)), "kernel": (P(None, None), (32, 64))}


def test_the_pretraining_setup_places_parameters_by_the_config_rules():
    from bert_jax.training.train import setup

    config = load_config("tiny", ["--config.mesh.fsdp=8", "--config.mesh.data=1", "--config.data.max_seq_length=16",
                                  "--config.data.max_predictions_per_seq=2", "--config.train.global_batch_size=8"])
    metadata = {"vocab_size": 64, "max_seq_length": 16, "max_predictions_per_seq": 2, "pair_task": "nsp"}
    words = lambda run: run.state_shardings.params["bert"]["embeddings"]["word_embeddings"]["embedding"]  # noqa: E731
    assert words(setup(config, metadata)).spec == P("tensor", "fsdp")
    config.mesh.logical_axis_rules = (("batch", ("data", "fsdp")), ("vocab", "fsdp"))
    assert words(setup(config, metadata)).spec == P("fsdp", None)
