"""doit, embedded: the one module that imports it.

doit schedules and parallelizes; it does not decide what is up to date. Its own
dependency database is written only at exit (a killed run would forget finished
tasks), so we give it an in-memory one and let the content-addressed cache answer
"is this step built?" at the moment doit asks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from doit.cmd_base import TaskLoader2
from doit.doit_cmd import DoitMain
from doit.task import Task

from edgebuild.critical_path import longest_path_first
from edgebuild.graph import Node


class MemoryDB:
    """A doit dependency backend that forgets everything at exit."""

    def __init__(self, name, codec, *, module_name=None):
        self.name = name
        self._data: dict = {}

    def dump(self) -> None:
        pass

    def set(self, task_id, dependency, value) -> None:
        self._data.setdefault(task_id, {})[dependency] = value

    def get(self, task_id, dependency):
        return self._data.get(task_id, {}).get(dependency)

    def in_(self, task_id) -> bool:
        return task_id in self._data

    def remove(self, task_id) -> None:
        self._data.pop(task_id, None)

    def remove_all(self) -> None:
        self._data.clear()


class _Collector:
    """A doit reporter that prints nothing (edgebuild reports its own progress) and
    keeps what failed, including tasks skipped because a dependency failed."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def add_failure(self, task, fail) -> None:
        self.failed[task.name] = fail.get_msg() if hasattr(fail, "get_msg") else str(fail)

    def runtime_error(self, msg) -> None:
        self.failed["<doit>"] = msg

    def _ignore(self, *args) -> None:
        pass

    get_status = execute_task = add_success = skip_uptodate = skip_ignore = _ignore
    teardown_task = complete_run = cleanup_error = _ignore


class _Loader(TaskLoader2):
    def __init__(self, tasks: list[Task], jobs: int, reporter: _Collector):
        super().__init__()
        self.tasks, self.jobs, self.reporter = tasks, jobs, reporter

    def setup(self, opt_values):
        pass

    def load_doit_config(self):
        return {"backend": "memory", "dep_file": ":memory:", "verbosity": 0,
                "reporter": self.reporter, "continue": True, "outfile": sys.stderr,
                "num_process": self.jobs if self.jobs > 1 else 0, "par_type": "thread"}

    def load_tasks(self, cmd, pos_args):
        return self.tasks


def run(nodes: list[Node], is_built: Callable[[Node], bool], build: Callable[[Node], bool],
        jobs: int = 1) -> dict[str, str]:
    """Run `build` for every node that `is_built` still denies, in dependency order,
    with up to `jobs` at once, the longest road to the end first. Returns {node id:
    failure message} for what failed, including nodes skipped because something they
    depend on failed."""
    nodes = longest_path_first(nodes)  # doit starts ready tasks in the order given
    ids = {node.id for node in nodes}
    tasks = [Task(
        name=node.id,
        actions=[(_action(build, node), (), {})],
        task_dep=[up for up in node.upstream() if up in ids],
        uptodate=[_check(is_built, node)],
        # 2 = doit does not capture output. Capturing swaps sys.stdout, which races
        # between runner threads and can leave the process writing into a dead buffer.
        verbosity=2,
    ) for node in nodes]
    collector = _Collector()
    # config_filenames=() keeps a user's pyproject.toml [tool.doit] or doit.cfg out.
    main = DoitMain(_Loader(tasks, jobs, collector), config_filenames=(),
                    extra_config={"BACKEND": {"memory": "edgebuild.engine:MemoryDB"}})
    streams = sys.stdout, sys.stderr
    try:
        main.run(["run"])
    finally:
        sys.stdout, sys.stderr = streams
    return collector.failed


def _action(build: Callable[[Node], bool], node: Node):
    def action() -> bool:
        return build(node)
    return action


def _check(is_built: Callable[[Node], bool], node: Node):
    def uptodate() -> bool:
        return is_built(node)
    return uptodate
