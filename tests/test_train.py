"""A real (tiny) training stage called in-process, as the DVC stage calls it, with the network cut off."""

from __future__ import annotations

import socket

import pytest
import yaml

from stagetrain.config import ConfigError, parse
from stagetrain.data import organize, sources
from stagetrain.train import checkpoint, runner


@pytest.fixture
def offline(monkeypatch):
    """Any DNS lookup or connection to a non-loopback address fails the test."""
    attempts = []

    def refuse_lookup(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1", None):
            attempts.append(host)
            raise OSError(f"network disabled in tests: lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def refuse_connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"network disabled in tests: connect to {address}")
        return real_connect(sock, address)

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    return attempts


@pytest.fixture
def workspace(tmp_path, params):
    cfg = parse(params)
    sources.run(cfg, "target", tmp_path / "raw")
    organize.run(cfg, "target", tmp_path / "raw", tmp_path / "organized")
    checkpoint.build_base(cfg, tmp_path / "base.pt")
    return params, tmp_path


def test_stage_trains_offline_and_writes_portable_outputs(workspace, offline, monkeypatch):
    params, tmp = workspace
    cfg = parse(params)
    monkeypatch.chdir(tmp)
    metrics = runner.run(cfg, "stage2", tmp / "organized/data.yaml", tmp / "base.pt", tmp / "out", tmp / "live", tmp / "work")
    assert offline == []
    assert metrics["epochs_run"] == 1 and metrics["freeze_level"] == 1 and metrics["frozen_layers"] == 10
    args = yaml.safe_load((tmp / "out/args.yaml").read_text())
    assert args["data"] == "organized/data.yaml" and args["model"] == "base.pt"  # relative to the run's cwd
    assert args["lr0"] == 0.001 and args["warmup_epochs"] == 0 and args["mosaic"] == 0.3
    assert str(tmp) not in (tmp / "out/args.yaml").read_text()
    ckpt = checkpoint.read(tmp / "out/best.pt")
    assert str(tmp) not in repr(checkpoint.model_of(ckpt).args) and "date" not in ckpt
    assert not (tmp / "work").exists() and not (tmp / "live/metrics.json").exists()
    assert len((tmp / "live/plots/metrics/train/box_loss.tsv").read_text().splitlines()) == 2  # header + 1 epoch


def test_upstream_with_other_class_names_is_refused(workspace):
    params, tmp = workspace
    renamed = parse({**params, "classes": ["a", "b", "c", "d", "e"]})
    with pytest.raises(ConfigError, match=r"class names \['blue_cone'.*differ from params.yaml `classes` \['a'"):
        runner.run(renamed, "stage2", tmp / "organized/data.yaml", tmp / "base.pt", tmp / "out", tmp / "live", tmp / "work")

