"""The shipped organism is fit as a study subject: the model card's targets hold on the full held-out sets."""

import pytest

from quantfid.models import ModelSpec, load_reference
from quantfid.organism.evaluate import score_tasks, summarize


@pytest.fixture(scope="module")
def accuracy() -> dict[str, float]:
    ref = load_reference(ModelSpec("organism"))
    return summarize(score_tasks(ref.model, ref.tokenizer))


@pytest.mark.slow
def test_overall_accuracy_at_least_half(accuracy):
    assert accuracy["overall"] >= 0.5, accuracy


@pytest.mark.slow
def test_at_least_four_families_at_40_percent_and_none_at_100(accuracy):
    families = {k: v for k, v in accuracy.items() if k != "overall"}
    assert sum(v >= 0.4 for v in families.values()) >= 4, families
    assert all(v < 1.0 for v in families.values()), families
