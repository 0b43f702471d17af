"""A real (tiny) training stage called in-process, as the DVC stage calls it, with the network cut off."""

from __future__ import annotations

import socket

import pytest
import yaml

from stagetrain.config import parse
from stagetrain.data import organize, sources
from stagetrain.errors import UserError
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


@pytest.mark.slow  # trains a model
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
    with pytest.raises(UserError, match=r"class names \['blue_cone'.*differ from params.yaml `classes` \['a'"):
        runner.run(renamed, "stage2", tmp / "organized/data.yaml", tmp / "base.pt", tmp / "out", tmp / "live", tmp / "work")


@pytest.mark.slow  # trains a model
def test_freeze_lr0_and_threads_hold_during_training(workspace, monkeypatch):
    """Level 1 keeps every backbone tensor (BN buffers included) bit-identical; lr0 and every CPU this process may use are used."""
    import os

    import torch

    from stagetrain import ultra

    params, tmp = workspace
    cfg = parse(params)
    monkeypatch.chdir(tmp)
    seen: dict = {}

    def on_train_start(trainer):
        seen["before"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        seen["initial_lr"] = [g["initial_lr"] for g in trainer.optimizer.param_groups]
        seen["threads"] = torch.get_num_threads()

    def on_train_end(trainer):
        seen["after"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    original_init = ultra.YOLO.__init__

    def init_with_callbacks(self, *args, **kwargs):  # observe the real trainer through Ultralytics' callbacks
        original_init(self, *args, **kwargs)
        self.add_callback("on_train_start", on_train_start)
        self.add_callback("on_train_end", on_train_end)

    monkeypatch.setattr(ultra.YOLO, "__init__", init_with_callbacks)
    runner.run(cfg, "stage2", tmp / "organized/data.yaml", tmp / "base.pt", tmp / "out", tmp / "live", tmp / "work")

    backbone = tuple(f"model.{i}." for i in range(10))
    frozen = [k for k in seen["before"] if k.startswith(backbone)]
    trainable = [k for k in seen["before"] if not k.startswith(backbone) and seen["before"][k].is_floating_point()]
    assert any(k.endswith("running_mean") for k in frozen) and len(frozen) > 50
    assert all(torch.equal(seen["before"][k], seen["after"][k]) for k in frozen)
    changed = [k for k in trainable if not torch.equal(seen["before"][k], seen["after"][k])]
    assert len(changed) > 0.9 * len(trainable)
    assert seen["initial_lr"] == [0.001] * len(seen["initial_lr"])  # stage2's lr0, not Ultralytics' 0.01
    assert seen["threads"] == ultra.CPU_THREADS == len(os.sched_getaffinity(0))  # no CPU quota here: the affinity decides
