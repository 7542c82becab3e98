"""Collection rules for the doctests in src/ (pytest runs --doctest-modules over src/labelsmooth).

A module that exists only to adapt an optional library raises ImportError without it; skip its
doctests then instead of failing the collection (the tests of that integration importorskip).
"""

import importlib.util

collect_ignore = [
    path
    for module, path in (("torchmetrics", "src/labelsmooth/integrations/torchmetrics.py"),)
    if importlib.util.find_spec(module) is None
]
