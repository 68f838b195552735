"""Score formulas: parsing refuses everything but arithmetic; evaluation is vectorized."""

from __future__ import annotations

import numpy as np
import pytest

from services.recommend.rank.formula import FormulaError, parse

OUTPUTS = {"probs_ctr": np.array([0.5, 0.25, 0.0]), "probs_cvr": np.array([0.64, 1.0, 0.5])}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("probs_ctr * probs_cvr ^ 0.5", [0.4, 0.25, 0.0]),
        ("probs_ctr * probs_cvr ** 0.5", [0.4, 0.25, 0.0]),
        ("0.7 * probs_ctr + 0.3 * probs_cvr", [0.542, 0.475, 0.15]),
        ("-probs_ctr + 1", [0.5, 0.75, 1.0]),
        ("max(probs_ctr, 0.3) / 2", [0.25, 0.15, 0.15]),
        ("sqrt(probs_cvr) * exp(0)", [0.8, 1.0, np.sqrt(0.5)]),
        ("2", [2.0, 2.0, 2.0]),
    ],
)
def test_formulas_evaluate_per_item(text, expected):
    np.testing.assert_allclose(parse(text)(OUTPUTS), expected)


def test_undefined_arithmetic_is_nan_not_an_error():
    scores = parse("log(probs_ctr)")(OUTPUTS)

    assert np.isneginf(scores[2])
    assert scores[0] == pytest.approx(np.log(0.5))


def test_a_formula_names_the_outputs_it_reads():
    assert parse("probs_ctr * probs_cvr ^ 0.5").names == {"probs_ctr", "probs_cvr"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("probs_ctr *", "not an expression"),
        ("__import__('os').system('x')", "is not allowed"),
        ("__import__('os')", r"__import__\(\) is not one of"),
        ("probs_ctr.real", "is not allowed"),
        ("probs_ctr[0]", "is not allowed"),
        ("probs_ctr if probs_cvr else 1", "is not allowed"),
        ("probs_ctr > 0.5", "is not allowed"),
        ("lambda: 1", "is not allowed"),
        ("probs_ctr % 2", "is not one of"),
        ("'text'", "is not a number"),
        ("log(probs_ctr, 2)", "takes 1 argument"),
        ("x" * 1001, "longer than"),
    ],
)
def test_anything_but_arithmetic_is_refused(text, message):
    with pytest.raises(FormulaError, match=message):
        parse(text)
