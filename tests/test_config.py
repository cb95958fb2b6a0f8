"""utils/config.py: base defaults, experiment files, ``_base_`` layering, typed overrides, save/load."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import quant
from backbones import available_models
from utils.config import BASE_CONFIG, CONFIG_DIR, Config, ConfigError, base_sections, load_config, parse_override
from utils.errors import InputError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_load_with_every_base_field():
    cfg = load_config()
    assert cfg.network == "r50" and cfg.batch_size == 128 and cfg.lr == 0.0
    assert cfg.eval_targets == ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]
    assert cfg.config_file == ""
    assert "{assets_dir}" not in cfg.generator_weights
    assert cfg.generator_weights.startswith(cfg.assets_dir)


def test_experiment_file_overrides_only_its_fields(tmp_path):
    exp = _write(tmp_path / "exp.py", 'network = "r18"\nweight_bits = 4\nlr = 1\n')
    cfg = load_config(exp)
    assert (cfg.network, cfg.weight_bits) == ("r18", 4)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # an int is accepted for a float field
    assert cfg.act_bits == load_config().act_bits
    assert cfg.config_file == str(exp)


def test_base_layering_applies_outermost_first(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "common.py", 'network = "r100"\nbatch_size = 64\nepochs = 3\n')
    _write(tmp_path / "sub" / "middle.py", '_base_ = "../common.py"\nbatch_size = 32\n')
    leaf = _write(tmp_path / "sub" / "leaf.py", '_base_ = "middle.py"\nepochs = 1\n')
    cfg = load_config(leaf)
    assert (cfg.network, cfg.batch_size, cfg.epochs) == ("r100", 32, 1)
    assert "_base_" not in cfg


def test_base_loop_and_missing_base_are_errors(tmp_path):
    _write(tmp_path / "a.py", '_base_ = "b.py"\n')
    _write(tmp_path / "b.py", '_base_ = "a.py"\n')
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.py")
    orphan = _write(tmp_path / "orphan.py", '_base_ = "nowhere.py"\n')
    with pytest.raises(ConfigError, match=r"orphan\.py.*nowhere\.py"):
        load_config(orphan)


def test_imports_and_helpers_in_a_config_file_are_not_fields(tmp_path):
    exp = _write(tmp_path / "exp.py", "import math\nfrom math import sqrt\n"
                                      "def _half(x):\n    return x / 2\n"
                                      "batch_size = int(sqrt(4096))\n")
    assert load_config(exp).batch_size == 64


@pytest.mark.parametrize("text, key, expected", [
    ("batch_size=256", "batch_size", 256),
    ("lr=1", "lr", 1.0),
    ("lr=0.05", "lr", 0.05),
    ("amp=false", "amp", False),
    ("resume=True", "resume", True),
    ("eval_targets=['lfw','agedb_30']", "eval_targets", ["lfw", "agedb_30"]),
    ('layer_bits={"conv1": [8, 8]}', "layer_bits", {"conv1": [8, 8]}),
    ("network=r18", "network", "r18"),
    ("output=123", "output", "123"),  # a string field keeps the text even when it looks like a number
    ("data_path=/data/faces emore", "data_path", "/data/faces emore"),
])
def test_command_line_overrides_are_typed(text, key, expected):
    value = load_config(None, [text])[key]
    assert value == expected and type(value) is type(expected)


def test_command_line_wins_over_the_file(tmp_path):
    exp = _write(tmp_path / "exp.py", "batch_size = 64\n")
    assert load_config(exp, ["batch_size=16"]).batch_size == 16


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    exp = _write(tmp_path / "typo.py", "batch_szie = 64\n")
    with pytest.raises(ConfigError, match=r"typo\.py.*'batch_szie'.*did you mean 'batch_size'"):
        load_config(exp)
    with pytest.raises(ConfigError, match=r"command line.*'batch_szie'.*did you mean 'batch_size'"):
        load_config(None, ["batch_szie=64"])
    with pytest.raises(AttributeError, match="did you mean 'batch_size'"):
        load_config().batch_szie


@pytest.mark.parametrize("override", ["batch_size=0.5", "batch_size=None", "amp=1", "lr=fast",
                                      "eval_targets=lfw", "network_kwargs=[1]", "batch_size=true"])
def test_wrong_type_on_the_command_line_names_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        load_config(None, [override])


def test_wrong_type_in_a_file_names_the_key_and_file(tmp_path):
    exp = _write(tmp_path / "bad.py", 'epochs = "11"\n')
    with pytest.raises(ConfigError, match=r"bad\.py.*'epochs' must be int"):
        load_config(exp)


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("batch_size")


def test_broken_config_file_is_reported_with_its_path(tmp_path):
    exp = _write(tmp_path / "broken.py", "batch_size = (\n")
    with pytest.raises(ConfigError, match=r"broken\.py.*SyntaxError"):
        load_config(exp)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.py")


def test_save_writes_a_config_that_loads_back_identically(tmp_path):
    cfg = load_config(CONFIG_DIR / "r100_real.py", ["weight_bits=4", "act_bits=4", "layer_bits={'conv1': [8, 8]}", "lr=0.02"])
    saved = cfg.save(tmp_path / "run")
    assert saved == tmp_path / "run" / "config.py"
    again = load_config(saved)
    assert {k: v for k, v in again.items() if k != "config_file"} == \
           {k: v for k, v in cfg.items() if k != "config_file"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["weight_bits"] == 4


def test_attribute_access_reads_and_guards_writes():
    cfg = load_config()
    cfg.batch_size = 8
    assert cfg["batch_size"] == 8
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        cfg.batch_szie = 8
    assert isinstance(cfg, Config)


CONFIG_FILES = sorted(p for p in CONFIG_DIR.rglob("*.py") if p != BASE_CONFIG)
NETWORKS = ["r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large", "vargfacenet"]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_loads(path):
    cfg = load_config(path, ["network=r18"] if path.parent.name == "paper" else [])
    assert cfg.network in available_models()


def test_one_recipe_per_network_and_data_setting_and_every_one_exports():
    """Each network's files are the exportable recipe (deploy placement), differing in data only."""
    for net in NETWORKS:
        synthetic = load_config(CONFIG_DIR / f"{net}_synthetic.py")
        real = load_config(CONFIG_DIR / f"{net}_real.py")
        for cfg in (synthetic, real):
            assert (cfg.network, cfg.quant_mode, cfg.act_observer, cfg.bias_correction) == (net, "deploy", "lsq", True)
            assert cfg.calibration_batches > 0 and cfg.teacher.endswith(f"_{net}/backbone.pth")
        assert (synthetic.data_source, real.data_source) == ("generator", "recordio")
        assert {k for k in synthetic if synthetic[k] != real[k]} == {"data_source", "data_path", "output",
                                                                    "config_file"}
    names = {p.stem for p in CONFIG_FILES if p.parent == CONFIG_DIR}
    assert not [n for n in names if "_w" in n and not n.startswith("demo_")]  # bits are overrides, not files


def test_bits_are_overrides_and_the_output_folder_follows_them():
    outputs = {load_config(CONFIG_DIR / "r50_synthetic.py", [f"weight_bits={b}", f"act_bits={b}"]).output
               for b in (8, 6, 4)}
    assert outputs == {f"work_dirs/r50_synthetic_w{b}a{b}" for b in (8, 6, 4)}
    paper = load_config(CONFIG_DIR / "paper" / "quantface_synthetic.py", ["network=r100", "weight_bits=4"])
    assert paper.output == "work_dirs/quantface_synthetic_r100_w4a8"
    assert load_config(CONFIG_DIR / "r50_synthetic.py", ["output=elsewhere"]).output == "elsewhere"


def test_act_percentile_zero_follows_the_width():
    qcfg = quant.QuantConfig.from_config(load_config(CONFIG_DIR / "r50_synthetic.py"))
    assert (qcfg.percentile(8), qcfg.percentile(6)) == (99.9999, 99.99)
    assert quant.QuantConfig(act_percentile=99.9).percentile(4) == 99.9


@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_the_paper_configs_reproduce_quantface(data):
    cfg = load_config(CONFIG_DIR / "paper" / f"quantface_{data}.py", ["network=r100", "weight_bits=4", "act_bits=4"])
    assert (cfg.quant_mode, cfg.act_observer, cfg.observer_steps, cfg.bn_mode) == ("quantface", "minmax", 300, "train")
    assert cfg.lr == 0.0 and cfg.optimizer == "sgd" and cfg.input_std is None  # the model's own spec
    assert quant.QuantConfig.from_config(cfg).weight_symmetric is False  # quantface: asymmetric weights
    if data == "synthetic":
        assert (cfg.data_source, cfg.epochs) == ("generator", 11)
        assert cfg.lr_milestones == [pytest.approx(10 / 11, abs=1e-3)]
    else:
        assert (cfg.data_source, cfg.epochs, cfg.data_path) == ("recordio", 1, "data/faces_emore")


def test_each_section_reads_exactly_the_fields_under_its_heading_in_base():
    """The typed sections and the flat file users edit describe the same fields: every field of base.py is
    read by the section named by its heading (the experimental data options by the data section), and no
    section reads a field from elsewhere."""
    from distill.settings import section_keys
    headings, sections = base_sections(), section_keys()
    headings["data"] += headings.pop("experimental")
    assert {title: set(names) for title, names in headings.items()} == sections


def test_a_bad_field_is_named_when_the_sections_are_built(tmp_path):
    from distill.settings import TrainSettings
    for override, message in (("loss=l1", "loss='l1' is not one of mse, cosine, angular"),
                              ("batch_size=0", "batch_size=0 must be >= 1"),
                              ("reconstruct_drop=1.0", "reconstruct_drop=1.0 must be in"),
                              ("eval_every=0", "eval_every=0 must be >= 1"),
                              ("observer_steps=-1", "observer_steps=-1 must be >= 0"),
                              ("reconstruct_iters=2 reconstruct_batch_size=0", "reconstruct_batch_size=0 must be >= 1"),
                              ("bias_correction=true", "bias_correction=True corrects biases after calibration")):
        with pytest.raises(InputError, match=re.escape(message)):
            TrainSettings.from_config(load_config(None, [*override.split(), f"output={tmp_path}"]))
