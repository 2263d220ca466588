"""Keeping the cache and dist/ tidy: gc drops what no lock file needs, clean removes
bundles (and, asked, the whole cache)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgebuild.cache import Cache
from edgebuild.errors import UsageError
from edgebuild.lockfile import lock_keys, read_lock
from edgebuild.recipe import load_recipe
from edgebuild.repo.settings import Settings


def gc(settings: Settings, recipe_paths: list[str], dry_run: bool) -> dict:
    """Drop entries that neither a known lock file nor the recipes named reference, then
    blobs no entry references, then temporary files over an hour old."""
    cache = Cache(settings.cache_dir)
    keep: set[str] = set()
    for lock_path in {*cache.roots(), *(load_recipe(Path(r)).lock_path for r in recipe_paths)}:
        keep |= lock_keys(read_lock(lock_path))
    unreferenced = [k for k in cache.entry_keys() if k not in keep]
    # Report plots are pictures of a report, drawn again by the next build that needs
    # one: dropped too, and counted apart from the steps.
    plots = [k for k in unreferenced if (e := cache.entry(k)) is not None and e.kind == "report"]
    dropped_entries = [k for k in unreferenced if k not in plots]
    live_blobs = _live_blobs(cache, keep)
    blobs = [p for p in cache.blobs.glob("*/*") if p.name not in live_blobs]
    freed = sum(p.stat().st_size for p in blobs)
    stale_tmp = [p for p in cache.tmp.iterdir() if time.time() - p.stat().st_mtime > 3600] \
        if cache.tmp.is_dir() else []
    if not dry_run:
        for key in dropped_entries + plots:
            cache.evict(key)
        for path in blobs:
            path.unlink(missing_ok=True)
        for path in stale_tmp:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    return {"entries": len(dropped_entries), "report_plots": len(plots),
            "blobs": len(blobs), "bytes": freed,
            "kept_entries": len(keep), "dry_run": dry_run}


def _live_blobs(cache: Cache, keys: set[str]) -> set[str]:
    live: set[str] = set()
    for key in keys:
        entry = cache.entry(key)
        for out in entry.outputs.values() if entry else ():
            live.add(out.digest)
            if out.tree:
                live |= {listed[0] for listed in cache.tree_listing(out).values()}
    return live


def clean(recipe_paths: list[str], settings: Settings, wipe_cache: bool) -> list[Path]:
    if not recipe_paths and not wipe_cache:  # doing nothing, silently, would surprise
        raise UsageError("clean: name the recipes whose bundles to remove (edgebuild clean "
                         "RECIPE...), or pass --cache to delete the whole cache")
    removed = []
    for recipe_path in recipe_paths:
        recipe = load_recipe(recipe_path)
        folder = settings.dist_dir / recipe.name
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    if wipe_cache and settings.cache_dir.exists():
        Cache(settings.cache_dir).clear()
        removed.append(settings.cache_dir)
    return removed
