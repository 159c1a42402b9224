"""Every setting of every config file, at every preset, can be overridden from the command line as train.py and
eval.py parse it (ml_collections' config_flags, lock_config=True). A field whose default is a bare None has no type
for config_flags ("Type NoneType ... is not supported"); an unset setting must be a typed placeholder instead."""

import functools
import pathlib

import pytest
from absl import flags
from ml_collections import config_dict, config_flags

from configs import common

CONFIG_FILES = sorted(p.relative_to(pathlib.Path(__file__).parents[1]).as_posix()
                      for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*_llama.py"))


def leaves(config: config_dict.ConfigDict, prefix: str = ""):
    """(dotted key, declared type, value) of every non-ConfigDict field, depth first."""
    for key in config.keys():
        value = config[key]
        if isinstance(value, config_dict.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", config.get_type(key), value


def another_value(field_type: type, value):
    """A value of `field_type` that differs from `value` (None for an unset placeholder), and its flag text."""
    if field_type is bool:
        return (not value), str(not value)
    if field_type is int:
        return (value or 0) + 3, str((value or 0) + 3)
    if field_type is float:
        return (value or 0.0) + 0.25, repr((value or 0.0) + 0.25)
    if field_type is str:
        return f"{value or ''}x", f"{value or ''}x"
    if field_type is tuple:
        return ("a", "b"), "('a', 'b')"
    raise AssertionError(f"no command-line override for a field of type {field_type}")


def parse(argv: list[str]) -> config_dict.ConfigDict:
    """The config train.py's flag definition makes of `argv`."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("preset", [None, *common.PRESETS])
@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_every_setting_can_be_overridden_from_the_command_line(config_file, preset):
    config_arg = config_file + (f":{preset}" if preset else "")
    default = parse(["train.py", f"--config={config_arg}"])
    expected, argv = {}, ["train.py", f"--config={config_arg}"]
    for key, field_type, value in leaves(default):
        assert field_type is not type(None), (
            f"{config_arg}: {key} defaults to a bare None, which the command line cannot override; declare it "
            "with ml_collections.config_dict.placeholder(TYPE)")
        expected[key], text = another_value(field_type, value)
        argv.append(f"--config.{key}={text}")
    overridden = parse(argv)
    for key, value in expected.items():
        assert functools.reduce(lambda node, name: node[name], key.split("."), overridden) == value, (config_arg, key)


def test_the_settings_the_config_docstrings_show_parse():
    """The overrides the config files document, e.g. PiSSA's randomized SVD (--config.adapter.niter=4)."""
    config = parse(["train.py", "--config=configs/pissa_llama.py:tiny", "--config.adapter.niter=4",
                    "--config.adapter.oversampling=2", "--config.adapter.init_base=nystrom",
                    "--config.adapter.stable_gamma=64", "--config.optimizer.loraplus_ratio=16"])
    assert (config.adapter.niter, config.adapter.oversampling, config.adapter.init_base) == (4, 2, "nystrom")
    assert (config.adapter.stable_gamma, config.optimizer.loraplus_ratio) == (64.0, 16.0)
