"""qnext: a gRPC server for Qwen3-Next hybrid models.

The design card's folders `worker/`, `kernels/` and `cli/` are the subpackages `qnext.worker`,
`qnext.kernels` and `qnext.cli` (setuptools `package-dir` maps them when installed). In a source
checkout used through PYTHONPATH, the checkout root is added to this package's search path so the
same import names resolve without an install.
"""

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "worker", "config.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
