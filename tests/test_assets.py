"""Asset cache: checksums, idempotence, repair of corrupted files, path safety and clear client errors.

The real assets are fetched once into the shared default cache; the failure paths use small real
archives written here and placed where a user would put a hand-downloaded archive.
"""
from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import zipfile
from pathlib import Path

import pytest

from assets import fetch as fetching
from assets import ASSETS, Asset, AssetError, Member, Source, ensure_all, fetch_asset
from utils.fileio import sha256_file

PAYLOAD = b"weights of a tiny test asset\n" * 100


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_tgz(path: Path, files: dict[str, bytes], symlink: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            tf.addfile(info)
    return path


def _register(monkeypatch, tmp_path: Path, archive_name: str, members: tuple[Member, ...], client: str = "npm",
              spec: str = "quantface-test-asset@1.0.0", archive_bytes: bytes | None = None,
              client_args: tuple[str, ...] = ()) -> Asset:
    """Add a test asset to the registry; if ``archive_bytes`` is given, place it as a user would."""
    archive_sha = _sha(archive_bytes) if archive_bytes is not None else "0" * 64
    asset = Asset("test_asset", members[0].dest, "test",
                  sources=(Source(client, spec, archive_name, archive_sha, members, client_args),))
    monkeypatch.setitem(ASSETS, asset.name, asset)
    if archive_bytes is not None:
        (tmp_path / "downloads").mkdir(parents=True, exist_ok=True)
        (tmp_path / "downloads" / archive_name).write_bytes(archive_bytes)
    return asset


def test_real_assets_are_cached_verified_and_idempotent():
    first = ensure_all()  # fetches only on the very first run on this machine
    assert [r.name for r in first] == list(ASSETS)
    for result in first:
        assert result.path.exists(), result
    root = fetching.assets_root()
    for asset in ASSETS.values():
        for source in asset.sources:
            for member in source.members:
                assert sha256_file(root / member.dest) == member.sha256, member.dest
    mtimes = {p: p.stat().st_mtime_ns for r in first for p in ([r.path] if r.path.is_file() else r.path.iterdir())}
    second = ensure_all()
    assert [r.status for r in second] == ["verified"] * len(ASSETS)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten


def test_corrupted_cached_file_is_detected_and_restored(tmp_path, monkeypatch, caplog):
    tgz = _write_tgz(tmp_path / "build.tgz", {"package/data.bin": PAYLOAD, "package/other.txt": b"x"})
    _register(monkeypatch, tmp_path, "quantface-test-asset-1.0.0.tgz",
              (Member("package/data.bin", "test/data.bin", _sha(PAYLOAD)),), archive_bytes=tgz.read_bytes())
    assert fetch_asset("test_asset", tmp_path).status == "fetched"
    target = tmp_path / "test" / "data.bin"
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "test" / "other.txt").exists()  # only the listed files are extracted
    assert fetch_asset("test_asset", tmp_path).status == "verified"

    target.write_bytes(PAYLOAD[:-1] + b"!")
    with caplog.at_level(logging.WARNING, logger="assets.fetch"):
        assert fetch_asset("test_asset", tmp_path).status == "fetched"
    assert target.read_bytes() == PAYLOAD
    assert "corrupt" in caplog.text and _sha(PAYLOAD) in caplog.text


def test_wheel_archives_are_read(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pkg/weights.tar", PAYLOAD)
    _register(monkeypatch, tmp_path, "pkg-1.0-py3-none-any.whl",
              (Member("pkg/weights.tar", "pkg/weights.tar", _sha(PAYLOAD)),), client="pip",
              spec="pkg==1.0", archive_bytes=buffer.getvalue())
    assert fetch_asset("test_asset", tmp_path).path.read_bytes() == PAYLOAD


def test_wrong_archive_is_reported_and_not_kept(tmp_path, monkeypatch):
    tgz = _write_tgz(tmp_path / "build.tgz", {"package/data.bin": PAYLOAD})
    asset = _register(monkeypatch, tmp_path, "a.tgz", (Member("package/data.bin", "t/data.bin", _sha(PAYLOAD)),),
                      archive_bytes=tgz.read_bytes())
    placed = tmp_path / "downloads" / "a.tgz"
    placed.write_bytes(b"not the archive")
    with pytest.raises(AssetError) as err:
        fetch_asset("test_asset", tmp_path)
    message = str(err.value)
    assert str(placed) in message and asset.sources[0].archive_sha256 in message
    assert _sha(b"not the archive") in message
    assert not placed.exists() and not (tmp_path / "t" / "data.bin").exists()


def test_member_checksum_mismatch_is_not_written(tmp_path, monkeypatch):
    tgz = _write_tgz(tmp_path / "build.tgz", {"package/data.bin": PAYLOAD})
    expected = _sha(b"something else")
    _register(monkeypatch, tmp_path, "a.tgz", (Member("package/data.bin", "t/data.bin", expected),),
              archive_bytes=tgz.read_bytes())
    with pytest.raises(AssetError, match="checksum mismatch for 'package/data.bin'") as err:
        fetch_asset("test_asset", tmp_path)
    assert expected in str(err.value) and _sha(PAYLOAD) in str(err.value)
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


def test_paths_leaving_the_cache_and_links_are_refused(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    tgz = _write_tgz(tmp_path / "build.tgz", {"package/data.bin": PAYLOAD},
                     symlink=("package/link.bin", "/etc/passwd"))
    _register(monkeypatch, root, "a.tgz", (Member("package/data.bin", "../escaped.bin", _sha(PAYLOAD)),),
              archive_bytes=tgz.read_bytes())
    with pytest.raises(AssetError, match="unsafe path"):
        fetch_asset("test_asset", root)
    assert not (tmp_path / "escaped.bin").exists()
    for bad in ("/abs/file", "a/../../b", ""):
        with pytest.raises(AssetError, match="unsafe path"):
            fetching._safe_dest(root, bad)

    _register(monkeypatch, root, "a.tgz", (Member("package/link.bin", "t/link.bin", _sha(PAYLOAD)),),
              archive_bytes=tgz.read_bytes())
    with pytest.raises(AssetError, match="not a regular file"):
        fetch_asset("test_asset", root)
    assert not (root / "t" / "link.bin").exists()


def test_missing_npm_gives_install_and_manual_instructions(tmp_path, monkeypatch):
    member = Member("package/data.bin", "t/data.bin", _sha(PAYLOAD))
    asset = _register(monkeypatch, tmp_path, "quantface-test-asset-1.0.0.tgz", (member,))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no npm on PATH
    with pytest.raises(AssetError) as err:
        fetch_asset("test_asset", tmp_path)
    message = str(err.value)
    assert "'npm' command was not found" in message and "Node.js" in message
    assert str(tmp_path / "downloads" / "quantface-test-asset-1.0.0.tgz") in message
    assert asset.sources[0].archive_sha256 in message and member.sha256 in message
    assert "npm pack quantface-test-asset@1.0.0" in message


def test_failed_download_names_package_and_client_output(tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path, "quantface_no_such_pkg-0.0.0-py3-none-any.whl",
              (Member("x/y.bin", "t/y.bin", _sha(PAYLOAD)),), client="pip", spec="quantface-no-such-pkg==0.0.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip's own setting: fail without touching the network
    with pytest.raises(AssetError) as err:
        fetch_asset("test_asset", tmp_path)
    message = str(err.value)
    assert "pip could not download quantface-no-such-pkg==0.0.0" in message
    assert "No matching distribution" in message  # the tail of pip's own error output
    assert str(tmp_path / "downloads" / "quantface_no_such_pkg-0.0.0-py3-none-any.whl") in message


def test_unknown_asset_name_lists_the_known_ones():
    with pytest.raises(AssetError, match="unknown asset 'gan'.*gan_face_generate"):
        fetch_asset("gan")


def test_teacher_is_built_from_a_hand_placed_tflite_and_rebuilt_when_damaged(tmp_path, caplog):
    source = fetching.ensure_asset("mobilefacenet_tflite_source")
    placed = tmp_path / ASSETS["mobilefacenet_tflite_source"].path  # where a user copies the extracted file
    placed.parent.mkdir(parents=True)
    placed.write_bytes(source.read_bytes())
    built = fetch_asset("mobilefacenet_tflite", tmp_path)
    assert built.status == "built" and built.path == tmp_path / "mobilefacenet_tflite.pt"
    assert not (tmp_path / "downloads").exists()  # nothing was downloaded
    assert fetch_asset("mobilefacenet_tflite", tmp_path).status == "verified"
    built.path.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="assets.fetch"):
        assert fetch_asset("mobilefacenet_tflite", tmp_path).status == "built"
    assert "rebuilding" in caplog.text
    assert fetch_asset("mobilefacenet_tflite", tmp_path).status == "verified"


def test_fetch_assets_tool_prints_a_table_and_fails_clearly(tmp_path, monkeypatch, capsys):
    from tools.fetch_assets import main

    source = fetching.ensure_asset("mobilefacenet_tflite_source")
    placed = tmp_path / ASSETS["mobilefacenet_tflite_source"].path
    placed.parent.mkdir(parents=True)
    placed.write_bytes(source.read_bytes())
    assert main(["--assets-dir", str(tmp_path), "--only", "mobilefacenet_tflite_source"]) == 0
    out = capsys.readouterr().out
    assert "mobilefacenet_tflite_source" in out and str(placed) in out and "verified" in out

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert main(["--assets-dir", str(tmp_path), "--only", "gan_face_generate"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "gan-face-generate==1.1.1" in captured.err
