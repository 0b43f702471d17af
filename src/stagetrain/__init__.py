"""stagetrain: multi-stage fine-tuning of Ultralytics YOLO detectors as one DVC pipeline."""

__version__ = "0.1.0"
