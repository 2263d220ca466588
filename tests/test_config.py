"""Where the remote cache and the scheduler come from, GPU placement on a cluster, and
shard selection: no build needed."""

from __future__ import annotations

import pytest

from edgebuild.api import Settings, shard_targets
from edgebuild.cli import main
from edgebuild.distributed import GPU_RESOURCE, placement
from edgebuild.errors import UsageError
from edgebuild.graph import Node
from edgebuild.remote import RemoteStore, display_url, scrub

pytestmark = pytest.mark.fast


def test_flags_win_over_environment_over_config_file(tmp_path, monkeypatch):
    (tmp_path / "edgebuild.toml").write_text(
        '[remote_cache]\nurl = "s3://from-file/cache"\nreadonly = true\n\n'
        '[dask]\nscheduler = "tcp://file:8786"\n')
    nested = tmp_path / "recipes" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)  # found in a parent folder, as git finds .git
    for name in ("EDGEBUILD_REMOTE_CACHE", "EDGEBUILD_REMOTE_CACHE_READONLY",
                 "EDGEBUILD_SCHEDULER"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (settings.remote_cache, settings.remote_readonly, settings.scheduler) == \
        ("s3://from-file/cache", True, "tcp://file:8786")
    monkeypatch.setenv("EDGEBUILD_REMOTE_CACHE", "s3://from-env/cache")
    assert Settings.from_env().remote_cache == "s3://from-env/cache"
    assert Settings.from_env(remote_cache="file:///flag").remote_cache == "file:///flag"


@pytest.mark.parametrize("text, message", [
    ('[remote_cache]\nurl = 3\n', "[remote_cache] url must be a string, not 3"),
    ('[remote_cache]\nulr = "s3://x"\n', "[remote_cache] has no key 'ulr' (known: url, "
                                         "readonly)"),
    ('[cache]\nurl = "s3://x"\n', "unknown section [cache]"),
    ('[remote_cache\n', "edgebuild.toml: "),
])
def test_a_bad_config_file_is_a_usage_error_that_names_it(tmp_path, monkeypatch, text, message):
    (tmp_path / "edgebuild.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as caught:
        Settings.from_env()
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)


def test_shards_partition_the_targets_deterministically():
    targets = [f"t{i}" for i in range(7)]
    shards = [shard_targets(targets, i, 3) for i in (1, 2, 3)]
    assert shards == [["t0", "t3", "t6"], ["t1", "t4"], ["t2", "t5"]]
    assert sorted(sum(shards, [])) == sorted(targets)
    assert shard_targets(targets[:2], 3, 3) == []


@pytest.mark.parametrize("shard", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_a_usage_error(shard, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["all", "recipes/detector.yaml", "--shard", shard])
    assert caught.value.code == 2
    assert "--shard" in capsys.readouterr().err


def test_gpu_steps_are_pinned_to_matching_gpu_workers_unless_deferred():
    gpu = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.13.3.9"}
    engine = Node("compile.tensorrt", {}, device={"host": gpu})
    assert placement(engine, ["tcp://a:1"]) == {
        "resources": {GPU_RESOURCE: 1}, "workers": ["tcp://a:1"], "allow_other_workers": False}
    deferred = Node("compile.tensorrt", {}, device={"host": {**gpu, "gpu": None}})
    assert placement(deferred, []) == {}
    assert placement(Node("bundle", {}), ["tcp://a:1"]) == {}


def test_urls_and_messages_are_printed_without_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    assert display_url("https://user:pa55word@host:9000/path?token=abc") == \
        "https://host:9000/path"
    store = RemoteStore("s3://bucket/x", options={"secret": "option-secret"})
    text = scrub("denied for very-secret-value and option-secret; X-Amz-Signature=abcd", store)
    assert "very-secret-value" not in text and "option-secret" not in text
    assert "abcd" not in text
