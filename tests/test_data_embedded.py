"""The embedded leg-counting set: every worked solution is checked line by line against legs counted here (an
independent table of animals whose legs are common knowledge) and integer arithmetic; splits are deterministic,
distinct and disjoint, and the GSM8K answer check reads each response's total."""

import re

import pytest

from lowrank_jax.data import embedded_examples
from lowrank_jax.evaluation import extract_answer, gold_answer

LEGS = {"snake": 0, "jellyfish": 0, "chicken": 2, "human": 2, "duck": 2, "dog": 4, "cat": 4, "cow": 4, "horse": 4,
        "elephant": 4, "starfish": 5, "ant": 6, "bee": 6, "beetle": 6, "spider": 8, "scorpion": 8, "crab": 10,
        "lobster": 10, "woodlouse": 14}
ANIMAL = r"(\d) ([a-z ]+)"  # "3 spiders", "1 sea slug": the count, then the name (with "s" when > 1)
QUERY = re.compile(rf"How many legs are there in total if you have {ANIMAL} and {ANIMAL}\?")
LINE = re.compile(rf"{ANIMAL} (?:has|have) (\d+) \* (\d+) = (\d+) legs\.")


def singular(count, name):
    if count == "1":
        return name
    assert name.endswith("s"), name
    return name[:-1]


def check_worked_solution(example):
    """Asserts the response's lines follow from the query; returns the animals and the stated total."""
    first_count, first, second_count, second = QUERY.fullmatch(example.query).groups()
    first, second = singular(first_count, first), singular(second_count, second)
    assert first < second                                              # one question per set of animals
    *lines, sum_line, answer_line = example.response.split("\n")
    totals = []
    for line, (count, name) in zip(lines, ((first_count, first), (second_count, second)), strict=True):
        stated_count, stated_name, factor, legs, total = LINE.fullmatch(line).groups()
        assert (stated_count, singular(stated_count, stated_name)) == (count, name)
        assert factor == count and 1 <= int(count) <= 6
        if name in LEGS:
            assert int(legs) == LEGS[name], line
        assert int(count) * int(legs) == int(total)
        totals.append(int(total))
    assert sum_line == f"{totals[0]} + {totals[1]} = {sum(totals)}" and answer_line == f"#### {sum(totals)}"
    return {first, second}, sum(totals)


def test_worked_solutions_are_right_and_scored_by_the_gsm8k_answer_check():
    examples = embedded_examples("test", 300)
    animals = set()
    for example in examples:
        names, total = check_worked_solution(example)
        animals |= names
        assert gold_answer(example.response) == str(total) == extract_answer(example.response)
    assert animals >= set(LEGS)                  # the independent table was really used, not skipped


def test_splits_are_deterministic_distinct_and_disjoint():
    test = embedded_examples("test", 200)
    assert embedded_examples("test", 200) == test and embedded_examples("test", 200, seed=1) != test
    validation = embedded_examples("validation", 50, exclude={e.query for e in test})
    train = embedded_examples("train", 2000, exclude={e.query for e in test + validation})
    queries = [{e.query for e in split} for split in (train, validation, test)]
    assert [len(q) for q in queries] == [2000, 50, 200]
    assert not queries[0] & queries[1] and not queries[0] & queries[2] and not queries[1] & queries[2]


def test_bad_split_and_size_name_the_setting():
    with pytest.raises(ValueError, match="not 'dev'"):
        embedded_examples("dev", 3)
    with pytest.raises(ValueError, match="size must be in"):
        embedded_examples("train", 0)
