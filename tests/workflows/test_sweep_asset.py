"""The scaling_sweep asset: part of the definitions, downstream of the feature tables, and a bad
spec fails its run with the spec's problem before anything starts."""

from __future__ import annotations

import dagster as dg
import pytest

from infra.settings import get_settings
from workflows.assets import scaling_sweep
from workflows.resources import StreamrecResource


def test_the_sweep_asset_is_composed_downstream_of_the_feature_tables() -> None:
    from workflows.definitions import defs

    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("scaling_sweep"))
    assert {key.to_user_string() for key in node.parent_keys} == {"item_vocab", "user_sequences"}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"spec": {"dims": []}}, "the grid is empty: dims has no values"),
        ({"spec": {"encoders": ["gru4rec"]}}, "unknown encoder 'gru4rec'"),
        ({"spec": {"data_fractions": [2.0]}}, "data fraction 2 is outside (0, 1]"),
        ({"spec": {"dims": [8]}, "resume": "abc"}, "give spec or resume, not both"),
    ],
)
def test_a_bad_spec_fails_the_run_saying_why(config: dict, says: str) -> None:
    result = dg.materialize(
        [scaling_sweep],
        resources={"streamrec": StreamrecResource.from_settings(get_settings())},
        run_config=dg.RunConfig(ops={"scaling_sweep": {"config": config}}),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE)
    user_failure = failure.step_failure_data.user_failure_data
    assert user_failure is not None and says in str(user_failure.description)
