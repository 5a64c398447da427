"""``answers_of``: a batch of Decisions as the decider's ``Outcome`` tuples, built in C."""

from __future__ import annotations

import gc
import sys

import pytest
from limiter.server.decider import Outcome as Answer  # the tuple type the decider uses

from limiter import Decision
from limiter._core import answers_of

RULE = object()
DECISIONS = [Decision(True, 10, 9, 0.5, 0.25), Decision(False, 10, 0, 1.5, 0.75)]


def test_allowed_and_refused_answers_with_their_codes_and_retry() -> None:
    allowed, refused = answers_of(Answer, DECISIONS, RULE, False, 1, 2)
    assert type(allowed) is Answer and type(refused) is Answer
    # An allowed answer never carries a retry, whatever the decision held.
    assert allowed == Answer(True, 1, 10, 9, 0.5, 0.0, 0.0, None, RULE)
    assert refused == Answer(False, 2, 10, 0, 1.5, 0.75, 0.0, None, RULE)
    assert refused.rule is RULE and refused.retry_after == 0.75


def test_shadow_turns_a_refusal_into_an_allowed_answer_that_keeps_its_retry() -> None:
    _, refused = answers_of(Answer, DECISIONS, RULE, True, 1, 2)
    assert refused == Answer(True, 1, 10, 0, 1.5, 0.75, 0.0, None, RULE)


def test_answers_hold_their_references() -> None:
    rule = object()
    before = sys.getrefcount(rule)
    answers = answers_of(Answer, DECISIONS * 50, rule, False, 1, 2)
    assert sys.getrefcount(rule) == before + 100
    gc.collect()
    assert [a.limit for a in answers] == [10] * 100
    del answers
    assert sys.getrefcount(rule) == before


@pytest.mark.parametrize("kind", [list, dict, type("WithDict", (tuple,), {})])
def test_a_kind_that_is_not_a_plain_tuple_subclass_is_refused(kind: type) -> None:
    with pytest.raises(TypeError, match="kind"):
        answers_of(kind, DECISIONS, RULE, False, 1, 2)


def test_something_other_than_a_decision_is_refused() -> None:
    with pytest.raises(TypeError):
        answers_of(Answer, [(True, 10, 9, 0.5)], RULE, False, 1, 2)
