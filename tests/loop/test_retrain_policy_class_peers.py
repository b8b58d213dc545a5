"""The drift cohort with class peers (``LoopConfig.train_with_class_peers``): the drifted
devices first, then the class's other online devices; ``min_devices`` counts them all, so a
class of three in which one device drifted retrains (SecAgg+ over all three)."""

from __future__ import annotations

from cloud_hub.loop.policy import ClassHealth, RetrainPolicy, decide_retraining

POLICY = RetrainPolicy(drift_fraction=0.3, drift_duration_s=10, min_devices=3)
ONE_OF_THREE = ClassHealth(
    device_class="x86-cpu",
    online_devices=["c", "a", "b"],
    drifted_since={"c": 0.0, "offline": 0.0},
)


def test_one_drifted_device_of_three_retrains_with_its_class_peers() -> None:
    d = decide_retraining(POLICY, ONE_OF_THREE, now=100.0, class_peers=True)
    assert d.retrain and d.trigger == "drift", d.reason
    assert d.cohort == ("c", "a", "b")  # the drifted device first, then its peers


def test_without_peers_the_drifted_device_alone_is_too_small_a_cohort() -> None:
    d = decide_retraining(POLICY, ONE_OF_THREE, now=100.0)
    assert not d.retrain and "cohort of 1 < 3" in d.reason


def test_peers_do_not_make_a_trigger() -> None:
    brief = ClassHealth(device_class="x86-cpu", online_devices=["a", "b", "c"],
                        drifted_since={"c": 95.0})  # fmt: skip
    assert not decide_retraining(POLICY, brief, now=100.0, class_peers=True).retrain
