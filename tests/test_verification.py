"""The parts of repair verification and trigger peeling that need no optimisation."""

import numpy as np
import pytest

from injection.triggers import Trigger
from mitigation.peeling import blanked, union
from mitigation.verification import anomaly_index, control_labels, scan_reference, verify


def test_control_labels_leave_out_the_flagged_and_spread_over_the_rest():
    assert control_labels([7], 10, controls=8) == [0, 1, 2, 3, 5, 6, 8, 9]
    assert control_labels([7], 10, controls=20) == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    many = control_labels([3, 33], 43, controls=8)
    assert len(many) == 8 and not {3, 33} & set(many)
    assert many[0] == 0 and many[-1] == 42, "spread from the first to the last label"
    assert control_labels([0, 1], 3) == [2]


def test_anomaly_index_is_how_far_below_the_median_in_mads():
    assert anomaly_index(10.0, 30.0, 5.0) == pytest.approx(4.0)
    assert anomaly_index(35.0, 30.0, 5.0) == pytest.approx(-1.0)
    assert anomaly_index(1.0, 30.0, 0.0) == float("inf")
    assert anomaly_index(30.0, 30.0, 0.0) == 0.0


def test_scan_reference_reads_the_flagged_labels_of_label_scans_only():
    labels = {str(k): {"l1_norm": 30.0 + k % 3} for k in range(10)}
    labels["7"] = {"l1_norm": 3.0}
    assert scan_reference({"labels": labels}) == [7]
    assert scan_reference({"labels": labels, "method": "gangsweep"}) is None
    assert scan_reference({"labels": {"0": {"l1_norm": 1.0}}}) is None


def test_verify_refuses_an_empty_label_list():
    with pytest.raises(ValueError, match="labels=None"):
        verify(None, None, None, labels=[])


def test_union_keeps_every_piece_with_its_own_pattern():
    shape = (6, 6, 1)
    a_mask, b_mask = np.zeros(shape[:2]), np.zeros(shape[:2])
    a_mask[0, 0], b_mask[5, 5], b_mask[0, 0] = 1.0, 0.8, 0.3
    a = Trigger(a_mask, np.full(shape, 200.0), 7)
    b = Trigger(b_mask, np.full(shape, 50.0), 7)
    both = union([a, b])
    assert both.target == 7
    assert both.mask[0, 0, 0] == 1.0 and both.mask[5, 5, 0] == pytest.approx(0.8)
    assert both.pattern[0, 0, 0] == 200.0 and both.pattern[5, 5, 0] == 50.0


def test_blanked_model_never_sees_the_blanked_pixels(tiny_backdoored, mnist_small):
    model, trigger, _ = tiny_backdoored
    _, _, xt, _ = mnist_small
    region = trigger.mask[..., 0] > 0.5
    fill = np.zeros(xt.shape[1:], np.float32)
    guarded = blanked(model, region, fill)
    stamped = trigger.apply(xt[:64]).astype(np.float32)
    # the stamp lives only in the region, so blanking it leaves the clean image there
    wiped = np.where(region[None, ..., None], fill, stamped)
    np.testing.assert_allclose(
        guarded.predict(stamped, verbose=0), model.predict(wiped, verbose=0), atol=1e-5
    )
    assert np.mean(np.argmax(guarded.predict(stamped, verbose=0), 1) == 7) < 0.5
