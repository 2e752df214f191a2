from pathlib import Path

import pytest
import yaml

from prdit.config import (
    Config,
    apply_overrides,
    config_differences,
    config_from_dict,
    load_config,
    parse_override,
    save_config,
    with_defaults,
)
from prdit.errors import ConfigError

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert config.training.grad_clip == 1.0
    assert config.training.weight_decay == 0.0


def test_official_defaults_of_the_paper():
    lidc1 = load_config("configs/lidc/local.yaml")
    lidc2 = load_config("configs/lidc/global.yaml")
    assert (lidc1.model.name, lidc1.training.lr, lidc1.training.total_steps) == ("PRDiT-B/12/0", 1e-4, 104000)
    assert (lidc2.model.name, lidc2.training.lr, lidc2.training.total_steps) == ("PRDiT-B/12/4", 8e-5, 130000)
    assert load_config("configs/rad/global.yaml").model.name == "PRDiT-XL/12/4"
    for config in (lidc1, lidc2):
        assert config.data.image_size == 128 and config.training.global_batch_size == 64
        assert config.training.ema_decay == 0.9999 and config.training.seed == 42
        assert (config.logging.log_every, config.logging.ckpt_every, config.logging.eval_every) == (400, 1000, 1000)


def test_real_ct_configs_follow_the_papers_training_choices_and_keep_bone():
    for path in ("configs/lidc/local.yaml", "configs/lidc/global.yaml", "configs/rad/local.yaml", "configs/rad/global.yaml"):
        config = load_config(path)
        assert config.data.hu_window == (-1000.0, 2000.0) and config.logging.eval_timestep == 100
        assert config.training.max_loss == 1e5 and config.model.init_gain == 0.1
    assert load_config("configs/lidc/global.yaml").model.pretrained_weights == "model"  # the paper loads raw weights
    assert Config().data.hu_window == (-1000.0, 2000.0)  # new models keep cortical bone
    for path in ("configs/phantom/local.yaml", "configs/phantom/global.yaml"):  # v1 of the shipped phantom model: its mapping
        assert load_config(path).data.hu_window == (-1000.0, 1000.0)


def test_misspelled_key_names_the_key_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"training": {"learning_rate": 1e-4, "lr": 1e-4}}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "training.learning_rate" in message and str(path) in message


def test_misspelled_section_suggests_the_section():
    with pytest.raises(ConfigError, match=r"unknown config key 'traning'.*'training'"):
        config_from_dict({"traning": {"lr": 1.0}})


def test_misspelled_nested_key_is_suggested():
    with pytest.raises(ConfigError, match=r"'model.nmae'.*'model.name'"):
        config_from_dict({"model": {"nmae": "PRDiT-B/12/0"}})


@pytest.mark.parametrize(
    "values, key",
    [
        ({"training": {"lr": "fast"}}, "training.lr"),
        ({"training": {"lr": -1}}, "training.lr"),
        ({"data": {"intensity": "minmax"}}, "data.intensity"),
        ({"data": {"hu_window": [1000, -1000]}}, "data.hu_window"),
        ({"data": {"flip_axes": [3]}}, "data.flip_axes"),
    ],
)
def test_invalid_values_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(values)


def test_batch_sizes_must_divide():
    with pytest.raises(ConfigError, match="multiple"):
        config_from_dict({"training": {"global_batch_size": 6, "micro_batch_size": 4}})


def test_overrides_parse_yaml_scalars_and_lists():
    assert parse_override("training.lr=3e-4") == (["training", "lr"], 3e-4)
    assert parse_override("data.flip_axes=[1, 2]") == (["data", "flip_axes"], [1, 2])
    assert parse_override("model.pretrained_path=null") == (["model", "pretrained_path"], None)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("training.lr")
    with pytest.raises(ConfigError, match="section"):
        parse_override("lr=1")


def test_overrides_apply_on_top_of_file_and_typos_are_caught():
    config = load_config("configs/lidc/local.yaml", ["training.lr=2e-4", "data.phantom.num=7", "model.name=PRDiT-B/12/4"])
    assert config.training.lr == 2e-4 and config.data.phantom.num == 7 and config.model.name == "PRDiT-B/12/4"
    with pytest.raises(ConfigError, match="training.lrr"):
        load_config("configs/lidc/local.yaml", ["training.lrr=1"])
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"training": {"lr": 1}}, ["training.lr.x=1"])


def test_save_and_reload_round_trip(tmp_path):
    config = load_config(None, ["training.lr=5e-5", "data.flip_axes=[2]", "data.hu_window=[-1024, 2000]"])
    path = save_config(config, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == config
    assert isinstance(again, Config)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=PRDiT-Q/6/0", r"'model.name'.*no size 'Q'.*did you mean PRDiT-B/6/0"),
        ("diffusion.sampler=foo", r"'diffusion'.*sampler 'foo'.*ian-euler, ian-pc, ian-2m"),
        ("diffusion.sampler=ian_pc", r"did you mean 'ian-pc'"),
        ("diffusion.sampler=ian-2m diffusion.process=flow", r"sampler 'ian-2m' does not exist for the flow process"),
        ("diffusion.process=ddpm", r"diffusion.process='ddpm' is unknown; valid: ian, flow"),
        ("diffusion.noise_std=0", r"diffusion.noise_std=0.0 must be positive"),
    ],
)
def test_model_and_sampler_names_are_checked_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config("configs/phantom/local.yaml", override.split())
    assert "\n" not in str(error.value)


def test_the_command_rejects_a_bad_model_name_in_one_line(capsys):
    from prdit.cli import main

    assert main(["config", "--config", "configs/phantom/local.yaml", "model.name=PRDiT-Q/6/0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prdit: error: ") and err.count("\n") == 1 and "PRDiT-Q/6/0" in err


def test_the_old_grad_checkpoint_key_still_loads_as_activation_checkpointing(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  name: PRDiT-T/6/0\n  grad_checkpoint: true\n")
    assert load_config(path).training.activation_checkpointing is True
    assert "'model.grad_checkpoint' is now 'training.activation_checkpointing'" in capsys.readouterr().err
    assert load_config(path, ["training.lr=1e-3"]).training.activation_checkpointing is True  # overrides on top
    assert load_config(None, ["model.grad_checkpoint=false"]).training.activation_checkpointing is False
    assert "grad_checkpoint" not in Config().to_dict()["model"]
    with pytest.raises(ConfigError, match="old name of 'training.activation_checkpointing'.*keep only the new key"):
        config_from_dict({"model": {"grad_checkpoint": True}, "training": {"activation_checkpointing": False}}, "both.yaml")


def test_a_run_saved_before_new_keys_existed_compares_equal_to_todays_defaults():
    config = config_from_dict({"model": {"name": "PRDiT-T/6/0"}, "training": {"activation_checkpointing": True}})
    saved = config.to_dict()
    saved["model"]["grad_checkpoint"] = saved["training"].pop("activation_checkpointing")
    del saved["training"]["parallel"]
    assert config_differences(with_defaults(saved), config.to_dict()) == {}
    saved["training"]["lr"] = 1.0
    assert config_differences(with_defaults(saved), config.to_dict()) == {"training.lr": (1.0, config.training.lr)}
