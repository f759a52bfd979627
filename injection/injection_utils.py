"""The reference module `injection/injection_utils.py`: `from injection.injection_utils import *`.

Its names, each the one nc-tf implementation: `BackdoorCall`
(`injection.callbacks`), `construct_mask_box`, `construct_mask_corner`
(`injection.triggers`). The injection example that star-imports it also
uses `injection_func`, `infect_X` and `DataGenerator`; they are here too,
so a port of the example needs this one import.
"""

from injection.callbacks import BackdoorCall
from injection.generators import DataGenerator
from injection.triggers import construct_mask_box, construct_mask_corner, infect_X, injection_func

__all__ = [
    "BackdoorCall",
    "DataGenerator",
    "construct_mask_box",
    "construct_mask_corner",
    "infect_X",
    "injection_func",
]
