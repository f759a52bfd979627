"""Lazy package namespaces: public names imported on first use.

A package's `__init__` maps each public name to the module that defines it;
nothing is imported until a name is used, so importing the package (for
`nc-tf --help`, say) does not load TensorFlow.
"""

import importlib
import sys


def lazy_exports(package, exports):
    """`(__getattr__, __dir__)` for `package`, whose names `exports` maps to their modules.

    Args:
        package: the package's `__name__`.
        exports: dict public name -> module that defines it.

    Returns:
        the two module-level functions to assign in the package's `__init__`.

    Example:

    >>> __getattr__, __dir__ = lazy_exports(__name__, {"scan": "nc_tf.scan"})  # doctest: +SKIP
    """

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
