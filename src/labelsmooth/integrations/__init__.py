"""Glue for other training stacks; each submodule needs its own optional dependency.

* :mod:`labelsmooth.integrations.transformers`: Hugging Face ``Trainer`` (``pip install
  labelsmooth[transformers]``);
* :mod:`labelsmooth.integrations.torchmetrics`: calibration metrics as torchmetrics ``Metric``
  classes (``pip install labelsmooth[torchmetrics]``).

Importing this package imports none of them: ``import labelsmooth.integrations.transformers``
loads only labelsmooth until a model is built.
"""
