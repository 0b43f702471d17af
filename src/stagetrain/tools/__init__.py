"""Developer tools, run from the Makefile and the tests, never imported by a pipeline stage.

* :mod:`~stagetrain.tools.repo`: fresh copies of a checkout (as a clone + ``dvc pull`` would give,
  never its run state), the test-sized params (``shrink``) and a ``dvc`` runner.
* :mod:`~stagetrain.tools.diff`: the first difference between two files of one type (JSON, text and
  markdown tables, checkpoints, ONNX), with what was left out of the comparison and why.
* :mod:`~stagetrain.tools.repro_check`: ``make repro-check``, the shrunk pipeline twice, compared.
* :mod:`~stagetrain.tools.unlock`: ``make unlock``, drop DVC's stale lock after a hard kill.
"""
