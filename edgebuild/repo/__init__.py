"""Operations: what the CLI (or any program) does with recipes, one module each.

project (open a recipe and plan it), build (run what is stale, ladders included),
finish (publish bundles, write the lock file), inspect (plan, explain, graph,
devices), reporting (the comparison report), housekeeping (gc, clean). They return
data; the CLI decides how to print it.
"""

from edgebuild.budget import table as misses_table
from edgebuild.console import Console
from edgebuild.repo.build import BuildReport, StepReport, build, plan
from edgebuild.repo.housekeeping import clean, gc
from edgebuild.repo.inspect import deferred_targets, devices, explain, graph_text, plan_doc
from edgebuild.repo.project import Project, cluster, open_project, shard_targets
from edgebuild.repo.reporting import report, report_doc
from edgebuild.repo.settings import Settings, folder_argument_problem
from edgebuild.verify import verify

__all__ = ["BuildReport", "Console", "Project", "Settings", "StepReport", "build", "clean",
           "cluster", "deferred_targets", "devices", "explain", "folder_argument_problem",
           "gc", "graph_text", "misses_table", "open_project", "plan", "plan_doc", "report",
           "report_doc", "shard_targets", "verify"]
