"""The losses benchmark's cells: MODEL/LOSS/OPTIMIZER with optional encoder settings, checked
before anything runs, and named in its Markdown table."""

from __future__ import annotations

import pytest

from benchmarks.train.losses import markdown, parse_cell


def test_a_cell_may_set_encoder_fields() -> None:
    assert parse_cell("sasrec/full/adam") == ("sasrec", "full", "adam", {})
    cell = "sasrec/full/rowwise_adagrad/scoring=dot+sasrec_post_norm=true"
    assert parse_cell(cell) == ("sasrec", "full", "rowwise_adagrad", {"scoring": "dot", "sasrec_post_norm": "true"})


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("sasrec/full", "is not MODEL/LOSS/OPTIMIZER"),
        ("sasrec/full/adam/scoring", "is not FIELD=VALUE"),
        ("sasrec/full/adam/scoring=euclid", "scoring"),
        ("sasrec/full/adam/no_such_field=1", "no_such_field"),
        ("sasrec/softmax/adam", "loss one of"),
    ],
)
def test_a_bad_cell_says_what_is_wrong(cell: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cell(cell)


def test_the_markdown_row_names_the_encoder_settings() -> None:
    figure = {"mean": 0.02, "std": 0.001}
    run = {"best_epoch": 3, "epochs_run": 8}
    keys = ("test_ndcg_10", "test_hr_10", "test_all_ndcg_10", "test_all_hr_10", "seq_per_s")
    row = {"runs": [run], "summary": dict.fromkeys(keys, figure)}
    table = markdown({"table": {"sasrec/full/rowwise_adagrad/scoring=dot": row}})
    assert "| sasrec (scoring=dot) | full | rowwise_adagrad | 0.0200 ± 0.0010 |" in table
