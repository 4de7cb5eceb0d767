"""rablip.evaluation.predictions: unknown ids ignored with one warning (the official treatment), refused when strict."""

from __future__ import annotations

import logging

import pytest

from rablip.errors import DataError
from rablip.evaluation.predictions import check_prediction_ids, known_predictions

LOGGER = "rablip.evaluation.predictions"


def test_unknown_ids_ignored_with_one_warning(caplog):
    predictions = {1: "a", 90: "x", 2: "b", 91: "y", 92: "z", 93: "w", 94: "v", 95: "u"}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        known = known_predictions(predictions, [1, 2, 3], "p.json", "question_id")
    assert known == {1: "a", 2: "b"}
    (warning,) = caplog.records
    message = warning.getMessage()
    assert "p.json" in message and "6 question_id(s)" in message and "ignored" in message
    assert "90, 91, 92, 93, 94" in message and "95" not in message


def test_strict_refuses_unknown_ids(caplog):
    with pytest.raises(DataError, match=r"p.json: 1 data_id\(s\) are not in the reference data, e.g. 'zz'"):
        known_predictions({"zz": "x"}, ["a"], "p.json", "data_id", strict=True)
    assert not caplog.records


def test_missing_ids_are_returned_not_warned(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert check_prediction_ids([2], [1, 2, 3], "p.json", "question_id", strict=True) == [1, 3]
        assert known_predictions({2: "b"}, [1, 2, 3], "p.json", "question_id") == {2: "b"}
    assert not caplog.records
