"""The lanes of `make test` (tests/conftest.py): every service test is in one xdist group, the
users of the session's trained pipeline all in the pipeline lane (it is built once per worker)."""

from __future__ import annotations

import pytest

LANES = {"pipeline", "platform"}
PIPELINE_FIXTURES = {"trained_pipeline", "served"}


def _lanes(item: pytest.Item) -> list[str]:
    return [str(marker.args[0]) for marker in item.iter_markers("xdist_group")]


def test_each_service_test_has_one_lane_and_unit_tests_none(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    service = [item for item in items if item.get_closest_marker("integration") or item.get_closest_marker("e2e")]
    for item in items:
        lanes = _lanes(item)
        if item in service:
            assert len(lanes) == 1 and lanes[0] in LANES, (item.nodeid, lanes)
        else:
            assert lanes == [], (item.nodeid, lanes)
    for item in service:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            assert _lanes(item) == ["pipeline"], item.nodeid
    if len(service) > 50:  # the whole tree was collected: both lanes have work
        assert {lane for item in service for lane in _lanes(item)} == LANES
