"""The median stopping rule and ASHA stop exactly the children below their cutoffs."""

from __future__ import annotations

import pytest

from controller.early_stopping import MedianStoppingRule, SuccessiveHalving, create_stopper


def _run(stopper: MedianStoppingRule | SuccessiveHalving, trial: str,
         curve: list[float]) -> int | None:
    """Report ``curve`` epoch by epoch until told to stop; the epoch it stopped at."""
    for epoch, acc in enumerate(curve, start=1):
        if stopper.report(trial, epoch, acc).stop:
            return epoch
    return None


def test_median_rule_waits_for_finished_children_then_stops_those_below_the_median() -> None:
    rule = MedianStoppingRule(max_epochs=4, grace_epochs=1, min_completed=2)
    # The first two children finish: nothing to compare with yet.
    assert _run(rule, "a", [0.5, 0.6, 0.7, 0.8]) is None
    assert _run(rule, "b", [0.3, 0.4, 0.5, 0.6]) is None
    # Running means after 1 epoch: a 0.5, b 0.3 -> median 0.4. 0.35 < 0.4: stop at epoch 1.
    assert _run(rule, "slow", [0.35, 0.9, 0.9, 0.9]) == 1
    # Medians of the running means: 0.4, 0.45, 0.5 after epochs 1-3; this child's best stays
    # at or above them: it trains to the end.
    assert _run(rule, "ok", [0.45, 0.5, 0.55, 0.6]) is None
    # Now three finished (a, b, ok). Medians 0.45 after epoch 1 (0.45 is not below) and 0.475
    # after epoch 2, above this child's best (0.46): stopped at epoch 2.
    assert _run(rule, "flat", [0.45, 0.46, 0.47, 0.48]) == 2
    assert rule.stopped("slow") == 1
    assert rule.stopped("ok") is None


def test_median_rule_respects_the_grace_period() -> None:
    rule = MedianStoppingRule(max_epochs=3, grace_epochs=2, min_completed=1)
    assert _run(rule, "a", [0.9, 0.9, 0.9]) is None
    # Far below after epoch 1, but epoch 1 is within the grace period: stopped at epoch 2.
    assert _run(rule, "bad", [0.1, 0.1, 0.1]) == 2


def test_asha_keeps_the_top_third_at_each_rung() -> None:
    asha = SuccessiveHalving(max_epochs=9, grace_epochs=1, eta=3)
    assert asha.rungs == [1, 3]
    # The first child at a rung always continues (nothing recorded to compare with).
    assert _run(asha, "a", [0.5] * 9) is None
    # Rung 1 holds [0.5]: cutoff 0.5, 0.4 is below -> stop at epoch 1.
    assert _run(asha, "b", [0.4] * 9) == 1
    # Rung 1 holds [0.5, 0.4]: cutoff (2/3 quantile) 0.4667; 0.6 continues. Rung 3 holds [0.5]:
    # 0.6 continues; it is never stopped.
    assert _run(asha, "c", [0.6] * 9) is None
    # Rung 1 holds [0.5, 0.4, 0.6]: cutoff 0.5333; 0.55 continues. At rung 3, [0.5, 0.6]:
    # cutoff 0.5667, 0.55 is below -> stop at epoch 3.
    assert _run(asha, "d", [0.55] * 9) == 3


def test_replayed_and_out_of_order_reports_decide_nothing_twice() -> None:
    asha = SuccessiveHalving(max_epochs=4, grace_epochs=1, eta=2)
    assert not asha.report("a", 1, 0.8).stop
    first = asha.report("b", 1, 0.2)
    assert first.stop and "rung 1" in first.reason
    # A replay (lost acknowledgement) gets the same answer and is not recorded again.
    assert asha.report("b", 1, 0.2) == first
    assert asha._recorded[1] == [0.8, 0.2]
    # A retried attempt reporting an epoch it skipped to is ignored rather than misread.
    assert not asha.report("c", 2, 0.1).stop


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_epochs": 0}, "max_epochs"), ({"max_epochs": 3, "grace_epochs": 0}, "grace_epochs"),
    ({"max_epochs": 3, "eta": 1}, "eta")])
def test_bad_settings_name_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SuccessiveHalving(**kwargs)


def test_create_stopper_by_name() -> None:
    assert create_stopper("none", 3) is None
    assert isinstance(create_stopper("median", 3), MedianStoppingRule)
    assert isinstance(create_stopper("asha", 3), SuccessiveHalving)
    with pytest.raises(ValueError, match="early_stopping"):
        create_stopper("hyperband", 3)


def test_forgetting_a_finished_child_keeps_what_it_taught_the_rule() -> None:
    # Arrange: two children trained to the end define the median; "slow" was stopped
    rule = MedianStoppingRule(max_epochs=3, grace_epochs=1, min_completed=2)
    assert _run(rule, "a", [0.5, 0.6, 0.7]) is None
    assert _run(rule, "b", [0.3, 0.4, 0.5]) is None
    assert _run(rule, "slow", [0.1, 0.2, 0.3]) == 1
    # Act
    for trial in ("a", "b", "slow"):
        rule.forget(trial)
    # Assert: its decisions are gone, the finished curves still decide
    assert rule.stopped("slow") is None
    assert _run(rule, "slow2", [0.1, 0.2, 0.3]) == 1
