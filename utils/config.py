"""Python config files layered on ``config/base.py`` plus ``key=value`` command-line overrides.

A config file is plain Python whose top-level assignments are config fields.  ``config/base.py``
declares every field with its default; an experiment file assigns only what differs.  An
experiment may layer on another experiment with ``_base_ = "other.py"`` (path relative to it).
Every assigned name must exist in base.py: a typo is an error naming the closest valid key.
"""
from __future__ import annotations

import ast
import copy
import difflib
import json
import os
import pprint
import re
import runpy
import types
from pathlib import Path
from typing import Any, Iterable

from utils.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
BASE_CONFIG = CONFIG_DIR / "base.py"


class ConfigError(InputError, ValueError):
    """A config file or override is wrong; the message names the key and what to do."""


class Config(dict):
    """A dict of config fields that also reads as attributes (``cfg.batch_size``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(_unknown_key_message(key, self.keys(), "config")) from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in self:
            raise ConfigError(_unknown_key_message(key, self.keys(), "config"))
        self[key] = value

    def to_python(self) -> str:
        """Render as a loadable config file (every field, sorted), for saving next to outputs."""
        lines = ['"""Config as used by this run (every field resolved)."""']
        for key in sorted(self):
            lines.append(f"{key} = {pprint.pformat(self[key], width=100, sort_dicts=True)}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        """Every field as JSON (non-JSON values as their ``str``), as ``save`` writes ``config.json``."""
        return json.dumps(self, indent=2, sort_keys=True, default=str)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.py`` and ``config.json`` into ``directory``; returns the .py path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(self.to_json())
        path = directory / "config.py"
        path.write_text(self.to_python())
        return path


def base_sections() -> dict[str, list[str]]:
    """Every field of ``config/base.py`` by the heading it stands under (``# ---- run ----`` gives "run")."""
    sections: dict[str, list[str]] = {}
    names: list[str] = []
    for line in BASE_CONFIG.read_text().splitlines():
        if line.startswith("# ----"):
            names = sections.setdefault(re.split(r"[:(]", line.strip("# -"))[0].strip(), [])
        elif "=" in line and line[:1].isalpha():
            names.append(line.split("=", 1)[0].strip())
    return sections


def field_sections() -> str:
    """Every field of ``config/base.py`` by section, names only (their defaults and meanings are in that file),
    for a command's ``--help``."""
    return "\n".join(f"  {title}: {', '.join(names)}" for title, names in base_sections().items() if names)


def _unknown_key_message(key: str, valid: Iterable[str], where: str) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys are listed in {BASE_CONFIG}"
    return f"unknown {where} key '{key}'{hint}"


# imports, helper functions and classes in a config file are not fields
_NOT_FIELDS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def _read_fields(path: Path) -> dict[str, Any]:
    """Execute a config file and return its public top-level assignments (not modules/functions)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as exc:  # a syntax or runtime error inside the user's config file
        raise ConfigError(f"cannot execute config file {path}: {type(exc).__name__}: {exc}") from exc
    fields = {}
    for key, value in namespace.items():
        if key.startswith("__") or (key.startswith("_") and key != "_base_"):
            continue
        if isinstance(value, _NOT_FIELDS):
            continue
        fields[key] = value
    return fields


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The chain of files from the outermost ``_base_`` down to ``path``."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files include each other in a loop: {' -> '.join(map(str, seen + (path,)))}")
    fields = _read_fields(path)
    parent = fields.pop("_base_", None)
    if parent is not None and not isinstance(parent, (str, os.PathLike)):
        raise ConfigError(f"{path}: '_base_' must be a file name (str), got {type(parent).__name__} {parent!r}")
    if parent and not (path.parent / parent).is_file():
        raise ConfigError(f"{path}: '_base_' file not found: {path.parent / parent}")
    chain = _layers((path.parent / parent), seen + (path,)) if parent else []
    return chain + [(path, fields)]


def _check_type(key: str, value: Any, default: Any, source: str) -> Any:
    """Values must match the default's type (ints are accepted for floats; None defaults take anything)."""
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = type(default)(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{source}: '{key}' must be {type(default).__name__} (default {default!r}), got "
            f"{type(value).__name__} {value!r}")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is a Python literal when it parses as one, else a string."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("none", "null"):
        return key, None
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Base defaults, then each layer of ``path``, then ``key=value`` overrides; all type-checked.

    ``{assets_dir}`` inside string fields is replaced by the resolved ``assets_dir`` field, and
    ``~`` in it is expanded, so configs can point into the asset cache portably.
    """
    defaults = _read_fields(BASE_CONFIG)
    defaults.pop("_base_", None)
    cfg = Config(copy.deepcopy(defaults))
    layers = _layers(Path(path)) if path else []
    for layer_path, fields in layers:
        if layer_path == BASE_CONFIG.resolve():
            continue
        for key, value in fields.items():
            if key not in cfg:
                raise ConfigError(f"{layer_path}: " + _unknown_key_message(key, cfg.keys(), "config"))
            cfg[key] = _check_type(key, value, defaults[key], str(layer_path))
    for text in overrides:
        key, value = parse_override(text)
        if key not in cfg:
            raise ConfigError("command line: " + _unknown_key_message(key, cfg.keys(), "config"))
        if isinstance(defaults.get(key), str) and not isinstance(value, str):
            value = text.split("=", 1)[1]  # e.g. output=123 stays the string "123"
        cfg[key] = _check_type(key, value, defaults.get(key), "command line")
    cfg["config_file"] = str(path) if path else ""
    if not cfg["output"]:
        cfg["output"] = default_output(cfg)
    return _resolve_paths(cfg)


def default_output(cfg: Config) -> str:
    """``work_dirs/<config name>[_<network>]_w<W>a<A>[_mixed]``: the folder a run goes to when ``output`` is
    not given, so that runs of one recipe at other widths (or of another network) never share a folder."""
    name = Path(cfg["config_file"]).stem if cfg["config_file"] else "run"
    if cfg["network"] not in name:
        name += f"_{cfg['network']}"
    name += f"_w{cfg['weight_bits']}a{cfg['act_bits']}" + ("_mixed" if cfg["layer_bits"] else "")
    return str(Path("work_dirs") / name)


def _resolve_paths(cfg: Config) -> Config:
    assets = os.path.expanduser(cfg["assets_dir"])
    cfg["assets_dir"] = assets
    for key, value in cfg.items():
        if isinstance(value, str) and "{assets_dir}" in value:
            cfg[key] = value.replace("{assets_dir}", assets)
    return cfg
