"""The one door to Ultralytics: import it from here and it runs hermetically.

Ultralytics keeps global settings in the user's home, downloads a font on every train/val,
pip-installs missing packages, phones home, and, when dvclive is importable, registers its own
DVC callback that patches ``dvc.yaml``. Importing this module first pins all of that down: a config
dir inside the repo (git-ignored), offline flags, a font that is already there, and every
integration off. Code elsewhere does ``from stagetrain.ultra import YOLO`` and never imports
``ultralytics`` before this module.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / ".ultralytics"

os.environ["YOLO_CONFIG_DIR"] = str(CONFIG_DIR)
os.environ["YOLO_OFFLINE"] = "1"  # is_online() -> False: no DNS probes, no downloads
os.environ["YOLO_AUTOINSTALL"] = "false"  # never pip-install at run time
os.environ.setdefault("YOLO_VERBOSE", "false")
CONFIG_DIR.mkdir(parents=True, exist_ok=True)


import matplotlib  # noqa: E402  (an Ultralytics dependency that ships DejaVu fonts)
import torch  # noqa: E402
import ultralytics.utils.torch_utils as _torch_utils  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import SETTINGS, USER_CONFIG_DIR  # noqa: E402

# check_font() looks in USER_CONFIG_DIR first and downloads Arial from the internet otherwise.
for _name in ("Arial.ttf", "Arial.Unicode.ttf"):
    if not (USER_CONFIG_DIR / _name).exists():
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", USER_CONFIG_DIR / _name)

SETTINGS.update(
    {
        "sync": False,  # no analytics events
        "api_key": "",
        "clearml": False,
        "comet": False,
        "dvc": False,  # we log with our own dvclive.Live per stage
        "mlflow": False,
        "raytune": False,
        "tensorboard": False,
        "wandb": False,
        "datasets_dir": str(CONFIG_DIR / "datasets"),
        "weights_dir": str(CONFIG_DIR / "weights"),
        "runs_dir": str(CONFIG_DIR / "runs"),
    }
)

# Ultralytics' select_device() resets torch to cpu_count-1 threads on CPU (1 of 2 cores here);
# raising its constant makes every trainer/validator use all cores (~1.8x img/s on 2 cores).
CPU_THREADS = os.cpu_count() or 1
_torch_utils.NUM_THREADS = CPU_THREADS
torch.set_num_threads(CPU_THREADS)

__all__ = ["YOLO", "CPU_THREADS", "resolve_device"]


def resolve_device(device: object) -> object:
    """Map the params' ``device: auto`` to the first CUDA GPU if there is one, else ``cpu``."""
    if device in (None, "", "auto"):
        return 0 if torch.cuda.is_available() else "cpu"
    return device
