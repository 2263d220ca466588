"""The documented GitHub Actions workflow: valid YAML, and every edgebuild command in
it is one this version accepts."""

from __future__ import annotations

import shlex

import pytest
import yaml
from conftest import REPO

from edgebuild.cli import _parser

pytestmark = pytest.mark.fast

WORKFLOW = REPO / ".github" / "workflows" / "edgebuild.yml"


def test_workflow_shards_with_a_matrix_and_shares_a_remote_cache():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    assert jobs["shard"]["strategy"]["matrix"]["shard"] == [1, 2, 3]
    assert jobs["release"]["needs"] == "shard"
    assert "EDGEBUILD_REMOTE_CACHE" in workflow["env"]
    commands = [line.strip() for job in jobs.values() for step in job["steps"]
                for line in step.get("run", "").splitlines()
                if line.strip().startswith("edgebuild ")]
    assert len(commands) == 4
    for command in commands:
        argv = shlex.split(command.split(">")[0].replace("${{ matrix.shard }}", "2")
                           .replace("${{ github.base_ref }}", "main"))[1:]
        args = _parser().parse_args(argv)
        assert args.command in ("all", "diff")
    assert any("--shard" in c for c in commands)
    # Pull requests get the diff against their base branch as a comment.
    diff = jobs["diff"]
    assert diff["if"] == "github.event_name == 'pull_request'"
    assert diff["permissions"] == {"pull-requests": "write"}
    assert any("edgebuild diff" in c and "--format markdown" in c for c in commands)
