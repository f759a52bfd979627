"""The reference module name: `from injection.injection_utils import ...` keeps working."""

from injection.triggers import construct_mask_box, construct_mask_corner, infect_X, injection_func  # noqa: F401
