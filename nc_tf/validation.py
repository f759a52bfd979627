"""Input validation at the boundary, in the manner of scikit-learn's `check_scalar`.

One function checks a scalar setting's type and range and raises a message
that names the setting, the valid range and the value given.
"""

import math
import numbers

# `include` -> (left bracket, right bracket) of the range text.
_BRACKETS = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}


def check_scalar(value, name, kind=numbers.Real, low=None, high=None, include="both",
                 what=None, hint=""):
    """Returns `value` (as int or float) if it has the right type and lies in range, else raises.

    Args:
        value: the value to check.
        name: the setting's name, used in the message.
        kind: `numbers.Integral` for whole numbers, `numbers.Real` for any
            real number (booleans are refused either way). Defaults to
            `numbers.Real`.
        low: the lower bound, or `None` for none. Defaults to `None`.
        high: the upper bound, or `None` for none. Defaults to `None`.
        include: which bounds belong to the range: `"both"`, `"left"`,
            `"right"` or `"neither"`. Defaults to `"both"`.
        what: what the value is, in the message (e.g. `"a fraction"`).
            Defaults to `None`: "a whole number" or "a number".
        hint: text appended to the message (e.g. the published value).
            Defaults to `""`.

    Returns:
        `int(value)` for `numbers.Integral`, else `float(value)`.

    Raises:
        ValueError: wrong type, NaN or infinite, or out of range.

    Example:

    >>> check_scalar(0.9, "persistence_threshold", low=0, high=1, include="right")
    0.9
    >>> check_scalar(0, "steps", numbers.Integral, low=1)
    Traceback (most recent call last):
    ...
    ValueError: steps must be a whole number >= 1, got 0.
    """
    whole = kind is numbers.Integral
    what = what or ("a whole number" if whole else "a number")
    left, right = _BRACKETS[include]
    if low is not None and high is not None:
        span = f" in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        span = f" {'>=' if left == '[' else '>'} {low:g}"
    elif high is not None:
        span = f" {'<=' if right == ']' else '<'} {high:g}"
    else:
        span = ""
    message = f"{name} must be {what}{span}, got {value!r}{hint}."
    if (isinstance(value, bool) or not isinstance(value, kind) or value != value
            or value in (math.inf, -math.inf)):
        raise ValueError(message)
    too_low = low is not None and (value < low if left == "[" else value <= low)
    too_high = high is not None and (value > high if right == "]" else value >= high)
    if too_low or too_high:
        raise ValueError(message)
    return int(value) if whole else float(value)
