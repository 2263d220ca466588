"""The `edgebuild` command: argument parsing and printing, nothing else.

Heavy modules (toolchains, doit, jsonschema) are imported by the operations that
need them, so `--help`, `plan` and no-op builds start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from edgebuild import __version__
from edgebuild.cli_output import print_devices, print_results, print_summary, print_warnings
from edgebuild.errors import EdgebuildError, UsageError

EXAMPLES = """\
examples:
  edgebuild all recipes/detector.yaml          build every target's bundle
  edgebuild build recipes/detector.yaml --target rpi4
  edgebuild plan recipes/detector.yaml         what is cached, what would run, and why
  edgebuild explain recipes/detector.yaml rpi4:quantize
  edgebuild report recipes/detector.yaml       metrics, budgets and a Pareto plot per target
  edgebuild graph recipes/detector.yaml --format dot | dot -Tsvg > graph.svg
  edgebuild gc --dry-run
  edgebuild verify dist/detector/rpi4 dist/detector/rpi4.tar.gz
  edgebuild diff recipes/detector.yaml --format markdown   against HEAD's lock file
  edgebuild all recipes/detector.yaml --remote-cache s3://bucket/edgebuild --shard 1/3
  edgebuild all recipes/detector.yaml --remote-cache s3://bucket/edgebuild \\
      --scheduler tcp://scheduler:8786

exit status: 0 success, 1 build or validation failure, 2 usage or recipe error
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", metavar="DIR", type=_folder,
                        help="artifact cache (default: $EDGEBUILD_CACHE or ./cache)")
    common.add_argument("--dist", metavar="DIR", type=_folder,
                        help="where bundles go (default: ./dist)")
    common.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of text")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress lines and no results table")
    common.add_argument("--remote-cache", metavar="URL",
                        help="shared cache behind the local one, any fsspec URL (s3://, gs://, "
                             "file://); default: $EDGEBUILD_REMOTE_CACHE or edgebuild.toml")
    common.add_argument("--remote-cache-readonly", action="store_true",
                        help="read the remote cache, never write it (untrusted builds)")

    parser = argparse.ArgumentParser(
        prog="edgebuild", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Declarative, cached builds of vision-model artifacts for edge devices.",
        epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"edgebuild {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    jobs = argparse.ArgumentParser(add_help=False)
    jobs.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N",
                      help="run up to N independent steps at once (default: one per core, "
                           "as memory allows about 1 GB per worker; or the Dask "
                           "cluster's threads)")
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                         help="run steps on this Dask cluster's workers (needs "
                              "--remote-cache); default: $EDGEBUILD_SCHEDULER or edgebuild.toml")

    jobs.add_argument("--require-engines", action="store_true",
                      help="fail targets whose TensorRT engine cannot be built here, "
                           "instead of deferring the build to the device")

    p = sub.add_parser("all", parents=[common, jobs, cluster],
                       help="build every target of the recipes")
    p.add_argument("recipes", nargs="+", metavar="RECIPE")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="build only shard I of N (every N-th target, from the I-th): one "
                        "CI runner each, then a final run assembles all bundles")
    p = sub.add_parser("build", parents=[common, jobs, cluster], help="build chosen targets")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--target", action="append", required=True, metavar="NAME",
                   help="target to build (repeatable)")
    p = sub.add_parser("plan", parents=[common, cluster],
                       help="show each step: cached or to run, and why")
    p.add_argument("recipe", metavar="RECIPE")
    p = sub.add_parser("explain", parents=[common, cluster],
                       help="diff a step's key against its last build")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("step", metavar="TARGET:KIND", help="e.g. rpi4:quantize")
    p = sub.add_parser("report", parents=[common],
                       help="write report.md, report.json and pareto.png from the cache")
    p.add_argument("recipe", metavar="RECIPE")
    p = sub.add_parser("graph", parents=[common], help="print the step graph")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    p = sub.add_parser("devices", parents=[common], help="list the device catalog")
    p = sub.add_parser("clean", parents=[common], help="remove bundles (and the cache)")
    p.add_argument("recipes", nargs="*", metavar="RECIPE")
    p.add_argument("--cache", action="store_true", help="also delete the whole cache")
    p = sub.add_parser("gc", parents=[common],
                       help="drop cache entries that no lock file references")
    p.add_argument("recipes", nargs="*", metavar="RECIPE",
                   help="also keep what these recipes' lock files reference")
    p.add_argument("--dry-run", action="store_true", help="only say what would go")
    p = sub.add_parser("diff", parents=[common],
                       help="compare what the targets ship with another revision's lock file")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("against", nargs="?", metavar="REV|LOCKFILE",
                   help="a git revision (default HEAD) or a lock file")
    p.add_argument("--format", choices=("text", "markdown"), default="text",
                   help="markdown: for a pull-request comment")
    p = sub.add_parser("verify", parents=[common],
                       help="check bundles (folders or .tar.gz) against their manifests")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except EdgebuildError as exc:
        print(f"edgebuild: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgebuild: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `edgebuild plan ... | head`: the reader has had enough
        _discard_stdout()
        return 0
    except OSError as exc:  # the machine, not the user: a full disk, a read-only folder
        print(f"edgebuild: {exc}", file=sys.stderr)
        return 1


def _discard_stdout() -> None:
    """Point stdout at /dev/null, or Python's flush at exit meets the closed pipe again
    and prints "Exception ignored ... BrokenPipeError" (the docs' "Note on SIGPIPE")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # redirected in-process: nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _folder(text: str) -> str:
    from edgebuild.repo import folder_argument_problem

    problem = folder_argument_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of 1 or more "
                                         "(how many steps run at once)")
    return jobs


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (0, 0)
    if not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError(f"'{text}' is not I/N with 1 <= I <= N, e.g. 1/3")
    return shard


def _settings(args):
    from edgebuild.repo import Settings

    return Settings.from_env(args.cache_dir, args.dist, getattr(args, "jobs", None),
                             getattr(args, "require_engines", False), args.remote_cache,
                             args.remote_cache_readonly, getattr(args, "scheduler", None),
                             getattr(args, "shard", None))


def _console(args):
    from edgebuild.repo import Console

    return Console(quiet=args.quiet or args.json)


def cmd_build(args) -> int:
    from edgebuild import repo

    settings, console = _settings(args), _console(args)
    recipes = args.recipes if args.command == "all" else [args.recipe]
    targets = None if args.command == "all" else args.target
    with repo.cluster(settings) as runner:
        # Validate every recipe before building any.
        projects = [repo.open_project(r, settings, targets, runner) for r in recipes]
        for project in projects:
            print_warnings(project.recipe)
            if not project.graph.target_chains:
                print(f"{project.recipe.name}: shard {'/'.join(map(str, settings.shard))} has "
                      f"no targets (the recipe has {len(project.recipe.targets)})",
                      file=sys.stderr)
        projects = [p for p in projects if p.graph.target_chains]
        reports = [repo.build(p, settings, console) for p in projects]
    # `all` ends with the comparison table and plot, as `edgebuild report` writes them.
    written, unwritten = [], False
    for project, report in zip(projects, reports, strict=True):
        try:
            written.append(repo.report(project, settings, report) if args.command == "all"
                           else None)
        except OSError as exc:  # e.g. a full disk: the bundles are there, say so
            print(f"edgebuild: could not write the report for {project.recipe.name}: {exc}",
                  file=sys.stderr)
            written.append(None)
            unwritten = True
    if args.json:
        docs = [{**r.to_dict(), "results": _results(p, r, w)["targets"],
                 **({"report": w} if w else {})}
                for p, r, w in zip(projects, reports, written, strict=True)]
        print(json.dumps(docs[0] if len(docs) == 1 else {"recipes": docs}, indent=2))
    else:
        for project, report, w in zip(projects, reports, written, strict=True):
            print_summary(report)
            if w:
                print(f"  report: {w['paths']['md']}, {w['paths']['png']}")
            if not args.quiet:
                print_results(_results(project, report, w))
    return 1 if unwritten or any(r.failed for r in reports) else 0


def _results(project, report, written: dict | None) -> dict:
    """The results table's doc: the report's, or, where none is written (`build`), the
    same rows made for it."""
    from edgebuild import repo

    return written["doc"] if written else repo.report_doc(project, report)


def cmd_plan(args) -> int:
    from edgebuild import repo

    settings = _settings(args)
    with repo.cluster(settings) as runner:
        doc = repo.plan_doc(repo.open_project(args.recipe, settings, runner=runner))
    for warning in doc["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        doc = {**doc, "step_list": [{k: v for k, v in s.items() if k != "misses"}
                                    for s in doc["step_list"]]}
        print(json.dumps({k: v for k, v in doc.items() if k != "ladders"}, indent=2))
        return 0
    steps = doc["step_list"]
    to_run = sum(s["status"] == "run" for s in steps)
    print(f"{doc['recipe']}: {len(steps)} steps, {len(steps) - to_run} cached, "
          f"{to_run} to run")
    for s in steps:
        key = (s["key"] or "?" * 12)[:12]
        print(f"  {s['status']:<6} {key}  {s['label']:<36} {', '.join(s['targets'])}")
        for reason in s["reasons"]:
            print(f"           why: {reason['message']}")
        for miss in s.get("misses", []):
            print(f"           budget missed: {miss['text']}")
    for target, reason in doc["deferred"].items():
        print(f"  {target}: deferred: {reason} (the bundle carries the build script)")
    for target, ladder in doc["ladders"].items():
        print(f"  {target}: fallback ladder at rung {ladder['rung']} "
              f"({ladder['index'] + 1} of {ladder['of']})")
    return 0


def cmd_explain(args) -> int:
    from edgebuild import repo

    settings = _settings(args)
    with repo.cluster(settings) as runner:
        project = repo.open_project(args.recipe, settings, runner=runner)
        state, previous, reasons = repo.explain(project, args.step)
    if args.json:
        print(json.dumps({"step": args.step, "key": state.key,
                          "previous_key": previous and previous["key"],
                          "cached": state.cached, "changes": [r.to_dict() for r in reasons]},
                         indent=2))
        return 0
    print(f"{args.step}: {state.node.label}")
    print(f"  key now:        {state.key or '(unknown until upstream steps run)'}")
    print(f"  last build:     {previous['key'] if previous else '(none recorded in the lock)'}")
    print(f"  cache:          {'hit' if state.cached else 'miss'}")
    if not reasons:
        print("  no differences")
    for reason in reasons:
        print(f"  {reason.message}")
    return 0


def cmd_report(args) -> int:
    from edgebuild import repo

    settings = _settings(args)
    written = repo.report(repo.open_project(args.recipe, settings), settings)
    if args.json:
        print(json.dumps(written, indent=2))
        return 0
    print_results(written["doc"])  # the table a build ends with, in report.md's units
    print(f"report: {written['paths']['md']}, {written['paths']['png']}")
    return 0


def cmd_graph(args) -> int:
    from edgebuild import repo

    project = repo.open_project(args.recipe, _settings(args))
    print(repo.graph_text(project, "json" if args.json else args.format), end="")
    return 0


def cmd_diff(args) -> int:
    from pathlib import Path

    from edgebuild.repo import diffing

    recipe = Path(args.recipe)
    if not recipe.is_file():
        raise UsageError(f"{recipe}: no such recipe")
    doc = diffing.diff(recipe.with_suffix(".lock"), args.against)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(diffing.markdown(doc) if args.format == "markdown" else diffing.text(doc), end="")
    return 0


def cmd_devices(args) -> int:
    from edgebuild import repo

    catalog = repo.devices()
    if args.json:
        print(json.dumps(catalog, indent=2))
        return 0
    print_devices(catalog)
    return 0


def cmd_clean(args) -> int:
    from edgebuild import repo

    for path in repo.clean(args.recipes, _settings(args), args.cache):
        print(f"removed {path}")
    return 0


def cmd_gc(args) -> int:
    from edgebuild import repo

    result = repo.gc(_settings(args), args.recipes, args.dry_run)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verb = "would drop" if args.dry_run else "dropped"
        plots = f", {result['report_plots']} report plots" if result["report_plots"] else ""
        print(f"{verb} {result['entries']} entries{plots} and {result['blobs']} blobs "
              f"({result['bytes'] / 1e6:.1f} MB); kept {result['kept_entries']} entries")
    return 0


def cmd_verify(args) -> int:
    from edgebuild import repo

    verdicts = [repo.verify(path) for path in args.bundles]
    if args.json:
        print(json.dumps({"bundles": [v.to_dict() for v in verdicts]}, indent=2))
    else:
        for verdict in verdicts:
            if verdict.ok:
                print(f"{verdict.path}: ok, {verdict.files} files match the manifest")
            for problem in verdict.problems:
                print(f"{verdict.path}: {problem}")
    return 0 if all(v.ok for v in verdicts) else 1


COMMANDS = {"all": cmd_build, "build": cmd_build, "plan": cmd_plan, "explain": cmd_explain,
            "report": cmd_report, "graph": cmd_graph, "devices": cmd_devices, "clean": cmd_clean,
            "gc": cmd_gc, "verify": cmd_verify, "diff": cmd_diff}
