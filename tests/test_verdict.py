import dataclasses

import pytest

from models.core.config import DetectorConfig
from models.core.verdict import describe, is_flagged, label_for, labels_for


def test_without_band_the_threshold_decides():
    cfg = DetectorConfig(threshold=0.3)
    assert label_for(0.29, cfg) == "real"
    assert label_for(0.3, cfg) == "synthetic"
    assert describe(cfg) == {"threshold": 0.3, "uncertain_band": [0.3, 0.3]}


def test_band_gives_uncertain_between_low_and_high():
    cfg = DetectorConfig(threshold=0.4, uncertain_band=(0.2, 0.7))
    assert labels_for([0.1, 0.2, 0.4, 0.69, 0.7, 0.95], cfg) == [
        "real", "uncertain", "uncertain", "uncertain", "synthetic", "synthetic"]
    # the binary decision (FPR/TPR at the threshold) still uses the threshold alone
    assert is_flagged([0.39, 0.4], cfg).tolist() == [False, True]


def test_band_round_trips_through_json(tmp_path):
    cfg = DetectorConfig(threshold=0.4, uncertain_band=(0.25, 0.6))
    cfg.save(tmp_path / "d.json")
    again = DetectorConfig.load(tmp_path / "d.json")
    assert again == cfg and isinstance(again.uncertain_band, tuple)


def test_band_must_contain_the_threshold():
    with pytest.raises(ValueError, match="uncertain_band"):
        DetectorConfig(threshold=0.8, uncertain_band=(0.2, 0.6))
    with pytest.raises(ValueError, match="uncertain_band"):
        dataclasses.replace(DetectorConfig(threshold=0.5), uncertain_band=(0.6, 0.9))
