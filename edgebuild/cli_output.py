"""What the CLI prints of a build: one line per target, the step counts, budget misses,
ladders, remote-cache traffic, artifacts slower than float, and the results table."""

from __future__ import annotations

import sys

from edgebuild.report_plot import size_text


def print_summary(report) -> None:
    counts = report.counts()
    extra = "".join(f", {counts[k]} {k}" for k in ("deferred", "skipped") if counts[k])
    for name, target in report.targets.items():
        where = target["bundle"] or "no bundle: " + ", ".join(target.get("failed_steps", []))
        if target.get("archive"):
            where += f"  ({size_text(target['archive']['bytes'])} .tar.gz)"
        print(f"  {name:<16} {target['status']:<9} {where}")
        if target.get("deferred"):
            print(f"  {'':<16} deferred: {target['deferred']}")
        if target.get("message"):
            print(f"  {'':<16} {target['message']}")
        if target.get("slower"):
            print(f"  {'':<16} {slower_text(target['slower'])}")
    print(f"{report.recipe}: {counts['total']} steps: {counts['cached']} cached, "
          f"{counts['executed']} executed, {counts['failed']} failed{extra} "
          f"({report.seconds:.1f}s)")
    if report.remote:
        _print_remote(report.remote)
    failed = {name: t for name, t in report.targets.items() if t["status"] == "failed"}
    if failed:
        print(f"failed: {', '.join(failed)}")
    for name, target in failed.items():
        if target.get("misses"):
            from edgebuild.repo import misses_table

            print(f"\n{name}: budget missed\n" + _indent(misses_table(target["misses"])))
        if target.get("fallback"):
            print(f"  fallback ladder: {target['fallback']['reason']}")
    for name, target in report.targets.items():
        if target["status"] != "failed" and len(target.get("fallback", {}).get("tried", [])) > 1:
            print(f"  {name}: {target['fallback']['reason']}")


def print_results(doc: dict) -> None:
    """The results table that ends a build (results_table: the report's rows)."""
    from edgebuild.results_table import render

    table = render(doc)
    if table:
        print("\n" + table)


def print_devices(catalog: dict[str, dict]) -> None:
    """The device catalog as a table: what each profile builds, and for what."""
    from edgebuild.report import text_table

    rows = []
    for name, profile in catalog.items():
        steps = "; ".join(_slot_text(slot, value)
                          for slot, value in profile.get("steps", {}).items())
        extra = "; ".join(_slot_text(slot, value)
                          for slot, value in profile.get("with_training_data", {}).items())
        if extra:
            steps += f"; given data.train: {extra}"
        rows.append([name, profile["format"], profile["runtime"], steps,
                     profile["description"]])
    print("\n".join(text_table(["device", "format", "runtime", "steps", "for"], rows)))


def _slot_text(slot: str, value) -> str:
    if value is True or not value:
        return slot if value else f"no {slot}"
    return f"{slot} " + ", ".join(f"{k} {_value_text(v)}" for k, v in value.items())


def _value_text(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_value_text, value)) + "]"
    return str(value)


def slower_text(slower: dict) -> str:
    """An artifact slower than its float artifact, said out loud (host timings)."""
    why = f"; {slower['why']}" if slower.get("why") else ""
    return (f"slower than float on this host: {slower['speedup']:.2f}x ({slower['note']})"
            f"{why}")


def _print_remote(remote: dict) -> None:
    mode = " (read-only)" if remote["readonly"] else ""
    print(f"  remote cache {remote['url']}{mode}: {remote['entries_fetched']} entries and "
          f"{remote['blobs_fetched']} blobs ({size_text(remote['bytes_fetched'])}) fetched, "
          f"{remote['entries_uploaded']} entries and {remote['blobs_uploaded']} blobs "
          f"({size_text(remote['bytes_uploaded'])}) uploaded")
    if remote.get("failure"):
        print(f"warning: remote cache {remote['url']}: {remote['failure']}; "
              "went on without it", file=sys.stderr)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def print_warnings(recipe) -> None:
    for warning in recipe.warnings:
        print(f"warning: {warning}", file=sys.stderr)

