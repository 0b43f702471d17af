"""S3 remote: push every output to a real S3 endpoint on 127.0.0.1 (moto's server mode, as DVC's own
tests use), pull it into an empty cache, and survive a push cut short by the server stopping."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import boto3
import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from stagetrain.tools import repo as repro

pytestmark = pytest.mark.slow
OUTPUT_DIRS = ("data/raw", "data/organized", "data/mined", "data/trainsets", "data/annotation", "models", "metrics", "plots/data")
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class S3Server:
    """moto's S3 in server mode on 127.0.0.1; ``stop_after`` object uploads, it stops mid-push.

    Stopping closes the listening socket and every open connection (a plain ``shutdown()`` would
    let keep-alive connections go on being served). The buckets live on in this process, as a real
    store's objects outlive a network outage, so a restarted server serves what was uploaded.
    """

    def __init__(self) -> None:
        self.port = 0
        self.stop_after: int | None = None
        self.uploads = 0
        self._server = None

    def start(self) -> None:
        self.down, self.uploads, self._connections = False, 0, set()
        backend = DomainDispatcherApplication(create_backend_app)

        def app(environ, start_response):
            conn = environ.get("werkzeug.socket")
            if self.down:
                _hang_up(conn)
                start_response("503 Service Unavailable", [])
                return [b""]
            self._connections.add(conn)
            response = backend(environ, start_response)
            if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].strip("/").count("/") >= 1:
                self.uploads += 1
                if self.stop_after is not None and self.uploads >= self.stop_after:
                    self.stop_after = None
                    threading.Thread(target=self.stop).start()
            return response

        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=MotoRequestHandler)
        self.port = self._server.server_port  # a restart binds the same port: the remote's endpointurl stays valid
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.down = True
        self._server.shutdown()  # serve_forever returns and closes the listening socket
        for conn in list(self._connections):
            _hang_up(conn)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **{k.lower(): v for k, v in KEYS.items()})

    def keys(self, bucket: str) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def _hang_up(conn) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):
        pass


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    server.start()
    yield server
    if not server.down:
        server.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A shrunk copy with the whole pipeline reproduced once."""
    root = repro.shrunk_copy(tmp_path_factory.mktemp("remote"))
    repro.dvc(root, "repro")
    return root


def env(tmp: Path, credentials: bool) -> dict[str, str]:
    """No AWS files of the host; the keys in the environment only when ``credentials``."""
    base = {k: v for k, v in repro.dvc_env().items() if not k.startswith("AWS_")}
    base |= {"AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials")}
    return base | (KEYS if credentials else {})


def manifest(root: Path) -> dict[str, str]:
    """sha256 of every file of every output."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for top in OUTPUT_DIRS
        for path in sorted((root / top).rglob("*"))
        if path.is_file() and path.suffix != ".cache" and path.name != ".gitignore"  # DVC's git entries, not outputs
    }


def cache_objects(root: Path) -> set[str]:
    cache = root / ".dvc/cache/files/md5"
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}


def wipe_and_pull(root: Path, environ: dict[str, str]) -> None:
    """Delete the local cache and every output, then pull them back from the remote."""
    for top in (".dvc/cache", *OUTPUT_DIRS):
        shutil.rmtree(root / top, ignore_errors=True)
    repro.dvc(root, "pull", env=environ)


def add_remote(root: Path, name: str, bucket: str, s3: S3Server) -> None:
    s3.client().create_bucket(Bucket=bucket)
    repro.dvc(root, "remote", "add", "-f", "-d", name, f"s3://{bucket}/stagetrain")
    repro.dvc(root, "remote", "modify", name, "endpointurl", s3.url)


def test_push_then_pull_into_an_empty_cache_restores_every_output(repo, s3, tmp_path):
    environ = env(tmp_path, credentials=True)  # keys from the environment
    add_remote(repo, "team", "round-trip", s3)
    before, lock = manifest(repo), (repo / "dvc.lock").read_text()
    objects = cache_objects(repo)
    assert "testing" not in (repo / ".dvc/config").read_text()

    repro.dvc(repo, "push", env=environ)
    assert {key.removeprefix("stagetrain/files/md5/") for key in s3.keys("round-trip")} == objects
    wipe_and_pull(repo, environ)

    assert manifest(repo) == before and (repo / "dvc.lock").read_text() == lock
    assert cache_objects(repo) == objects
    assert "up to date" in repro.dvc(repo, "status").stdout


def test_push_cut_short_by_the_server_stopping_then_retried_leaves_a_complete_remote(repo, s3, tmp_path):
    environ = env(tmp_path, credentials=False)
    add_remote(repo, "team", "interrupted", s3)
    for key, value in (("access_key_id", "testing"), ("secret_access_key", "testing")):
        repro.dvc(repo, "remote", "modify", "--local", "team", key, value)  # keys in .dvc/config.local only
    assert subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=repo, check=False).returncode == 0
    assert "testing" not in (repo / ".dvc/config").read_text()
    before, objects = manifest(repo), cache_objects(repo)

    s3.stop_after = len(objects) // 3
    no_retries = environ | {"AWS_MAX_ATTEMPTS": "1"}  # fail fast once the server is gone (botocore backs off for minutes)
    cut = repro.dvc(repo, "push", env=no_retries, check=False)
    assert cut.returncode != 0 and s3.down, cut.stdout + cut.stderr
    s3.start()
    assert 0 < len(s3.keys("interrupted")) < len(objects)

    repro.dvc(repo, "push", env=environ)
    assert {key.removeprefix("stagetrain/files/md5/") for key in s3.keys("interrupted")} == objects
    wipe_and_pull(repo, environ)
    assert manifest(repo) == before
    assert "up to date" in repro.dvc(repo, "status").stdout


def test_credentials_are_never_committed(repo):
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    assert ".dvc/config" in tracked and ".dvc/config.local" not in tracked
    committed = subprocess.run(
        ["git", "status", "--porcelain", "--ignored=no"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert "config.local" not in committed  # ignored, so `git add -A` can never pick it up
    config = (repo / ".dvc/config").read_text()
    assert "endpointurl" in config and "access_key_id" not in config and "secret_access_key" not in config
