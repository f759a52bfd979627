import math

import numpy as np

from nc_tf.metrics import accuracy, attack_success_rate


def test_attack_success_excludes_target_samples():
    # The two samples already labelled 3 do not count, whatever is predicted.
    assert attack_success_rate([3, 3, 3, 0], [3, 3, 1, 2], 3) == 0.5
    assert attack_success_rate([0, 0], [1, 2], 3) == 0.0


def test_attack_success_per_sample_targets():
    # all-to-all style: each sample has its own target.
    assert attack_success_rate([1, 2, 0], [0, 1, 2], np.array([1, 2, 9])) == 2 / 3


def test_attack_success_all_target_is_nan():
    assert math.isnan(attack_success_rate([3, 3], [3, 3], 3))


def test_accuracy():
    assert accuracy([1, 2, 3], [1, 2, 0]) == 2 / 3
