"""Answer extraction, gold answers and scores on hand-written generations and real GSM8K train solutions."""

import math

import pytest

from lowrank_jax.evaluation import (exact_match_accuracy, extract_answer, gold_answer, mean_loss_and_perplexity,
                                    normalize_number)
from lowrank_jax.data.answers import final_answer_span

# Real GSM8K train solutions (MIT licence): a plain one, a negative answer, a thousands separator.
GSM8K_SOLUTIONS = {
    "72": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
          "in April and May.\n#### 72",
    "-7": "-14 + (-8) + 1 = <<-14+-8+1=-21>>-21 degrees Fahrenheit\n-21/3 = <<-21/3=-7>>-7 degrees Fahrenheit\n"
          "The average temperature was -7 degrees Fahrenheit.\n#### -7",
    "1080": "The amount of money deducted from Adam's daily pay is $40 / 10 = $<<40/10=4>>4.\nSo after deducting "
            "10%, Adam\u2019s daily pay is $40 \u2013 $4 = $<<40-4=36>>36.\nThis means that in 30 days he earns "
            "$36 * 30 = $<<36*30=1080>>1080.\n#### 1,080",
}


@pytest.mark.parametrize("text, expected", [
    ("72", "72"), ("1,080", "1080"), ("$1,200.00", "1200"), ("72.", "72"), ("18.0", "18"), ("5.50", "5.5"),
    ("0.25", "0.25"), ("-7", "-7"), ("-0", "0"), ("\u22123", "-3"), ("$-4", "-4"), ("-$4", "-4"), ("18%", "18"),
    ("109,200,000", "109200000"), ("1,2", "1"), ("a 3-page letter", "3"), ("nothing here", None), ("", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("expected, solution", list(GSM8K_SOLUTIONS.items()))
def test_gold_answer_of_real_gsm8k_solutions(expected, solution):
    assert gold_answer(solution) == expected
    # A model that reproduces the reference solution gets the same answer back.
    assert extract_answer(solution) == expected


@pytest.mark.parametrize("generated, expected", [
    ("48 / 2 = 24 clips in May. 48 + 24 = 72.\n#### 72", "72"),
    ("#### 72\n\nThen for the next question, 5 + 5 = 10", "72"),           # first '####' wins over later numbers
    ("It costs $1,080 in total.\n#### $1,080.00", "1080"),
    ("#### -7 degrees", "-7"),
    ("She earns 12 * 5 = 60 dollars. The answer is: 60", "60"),          # MetaMath style
    ("The answer is 18.", "18"),
    ("So the final answer is: $2.50", "2.5"),
    ("First 3 * 4 = 12, then 12 + 5 = 17 apples.", "17"),                 # no marker: the last number
    ("12 - 5 = 7", "7"),                                                  # a minus between numbers is no sign
    ("#### \n9 apples and 4 pears", "4"),                              # nothing on the marker's line: last number
    ("48 + 24 = 72\n\n### Instruction:\nTom has 5 apples.\n\n### Response:\n#### 5", "72"),  # invented problem cut
    ("I do not know.", None),
])
def test_extract_answer(generated, expected):
    assert extract_answer(generated) == expected


def test_final_answer_span_covers_only_the_number():
    solution = GSM8K_SOLUTIONS["1080"]
    start, end = final_answer_span(solution)
    assert solution[start:end] == "1,080" and end == len(solution)
    solution = "So 3 + 4 = 7 apples. The answer is: 7"
    start, end = final_answer_span(solution)
    assert (start, end) == (len(solution) - 1, len(solution))


def test_gold_answer_without_final_answer_raises():
    with pytest.raises(ValueError, match="no final answer"):
        gold_answer("48 + 24 = 72 clips")


def test_exact_match_accuracy_counts_and_reports_answers():
    references = [GSM8K_SOLUTIONS["72"], GSM8K_SOLUTIONS["-7"], GSM8K_SOLUTIONS["1080"], "x\n#### 3"]
    generations = ["so 72 in all.\n#### 72", "The answer is: 7", "It is $1,080.00 in total.", "no idea"]
    result = exact_match_accuracy(generations, references)
    assert (result.correct, result.n, result.accuracy) == (2, 4, 0.5)
    assert result.predicted == ["72", "7", "1080", None]
    assert result.gold == ["72", "-7", "1080", "3"]


def test_exact_match_accuracy_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="1 generations but 2 reference"):
        exact_match_accuracy(["#### 1"], ["#### 1", "#### 2"])
    with pytest.raises(ValueError, match="empty"):
        exact_match_accuracy([], [])


def test_mean_loss_and_perplexity():
    token_losses = [0.5, 1.25, 2.0, 0.25, 3.0]
    mean, perplexity = mean_loss_and_perplexity(sum(token_losses), len(token_losses))
    assert mean == pytest.approx(1.4)
    assert perplexity == pytest.approx(math.exp(1.4))
    with pytest.raises(ValueError, match="no target tokens"):
        mean_loss_and_perplexity(0.0, 0.0)
