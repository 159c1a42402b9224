"""The embedded offline data: leg-counting word problems drawn with `reasoning-gym` (PyPI, Apache-2.0).

"How many legs are there in total if you have 3 spiders and 2 cows?" Each problem names two kinds of animal (out of
reasoning-gym's 37, from snakes with 0 legs to woodlice with 14) and 1 to 6 of each. The response works it out
GSM8K-style, one line per animal and the sum, and ends in `#### n`, so the GSM8K answer check scores it:

  3 spiders have 3 * 8 = 24 legs.
  2 cows have 2 * 4 = 8 legs.
  24 + 8 = 32
  #### 32

SmolLM2-135M-Instruct answers almost none of these right zero-shot; what fine-tuning has to teach (each animal's
legs, small products and sums, the answer format) is short, so a CPU run can show the accuracy move. reasoning-gym
draws the animals and counts; the text is written here, with the animals in alphabetical order, so that two problems
with the same animals and counts are one question, which the held-out splits exclude from training.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from lowrank_jax.data.example import Example

EMBEDDED_PACKAGE = "reasoning-gym==0.1.25"
# reasoning-gym seeds item i of a dataset with `seed + i`, so each split draws from its own block of seeds.
_SPLIT_BLOCKS = {"train": 0, "validation": 1, "test": 2}
_SEEDS_PER_BLOCK = 10_000_000
# Two kinds of animal, 1-6 of each: 666 pairs x 36 counts = 23,976 distinct problems, enough for the default
# splits (7473 train, 1319 test); one kind would give only 222.
_ANIMAL_KINDS = 2
_MAX_PER_KIND = 6


def _animals(count: int, name: str) -> str:
    # reasoning-gym's plural rule (so also "sheeps"), kept so that its question texts and these agree.
    return f"{count} {name}{'s' if count > 1 else ''}"


def _example(animals: dict[str, int], legs: dict[str, int]) -> Example:
    """The question and worked solution for `animals` (name -> how many), `legs` giving each animal's legs."""
    names = sorted(animals)
    query = ("How many legs are there in total if you have "
             f"{' and '.join(_animals(animals[n], n) for n in names)}?")
    totals = [animals[n] * legs[n] for n in names]
    lines = [f"{_animals(animals[n], n)} {'have' if animals[n] > 1 else 'has'} {animals[n]} * {legs[n]} = {t} legs."
             for n, t in zip(names, totals)]
    if len(totals) > 1:
        lines.append(f"{' + '.join(map(str, totals))} = {sum(totals)}")
    return Example(query, "\n".join(lines + [f"#### {sum(totals)}"]))


def _generated(split: str, seed: int, count: int) -> Iterator[Example]:
    """`count` examples of `split` (deterministic in split and seed; may repeat)."""
    try:
        import reasoning_gym
        from reasoning_gym.arithmetic.leg_counting import ANIMALS
    except ImportError as e:
        raise ImportError(f"the embedded data needs `pip install {EMBEDDED_PACKAGE}` (listed in requirements.txt); "
                          "or train on other data with --config.data.source=...") from e
    base = (3 * seed + _SPLIT_BLOCKS[split]) * _SEEDS_PER_BLOCK
    dataset = reasoning_gym.create_dataset("leg_counting", seed=base, size=count, min_animals=_ANIMAL_KINDS,
                                           max_animals=_ANIMAL_KINDS, min_instances=1, max_instances=_MAX_PER_KIND)
    for i in range(count):
        item = dataset[i]
        example = _example(item["metadata"]["animals"], ANIMALS)
        if example.response.rpartition("#### ")[2] != item["answer"]:  # reasoning-gym's own total
            raise AssertionError(f"embedded: worked solution {example.response!r} disagrees with {item['answer']}")
        yield example


def embedded_examples(split: str, size: int, seed: int = 0, exclude: Collection[str] = ()) -> list[Example]:
    """`size` distinct generated problems of `split`, none of whose questions is in `exclude`.

    Args:
      split: 'train', 'validation' or 'test'; each draws from its own seeds.
      size: number of examples.
      seed: picks another sample of every split.
      exclude: questions that must not appear (pass the held-out splits' questions when building 'train').

    Returns:
      Examples with worked responses ending in GSM8K's `#### n`.

    >>> example = embedded_examples("test", 1)[0]
    >>> print(example.query)
    How many legs are there in total if you have 2 deers and 5 sea slugs?
    >>> print(example.response)
    2 deers have 2 * 4 = 8 legs.
    5 sea slugs have 5 * 0 = 0 legs.
    8 + 0 = 8
    #### 8
    """
    if split not in _SPLIT_BLOCKS:
        raise ValueError(f"embedded data has splits {sorted(_SPLIT_BLOCKS)}, not {split!r}")
    if not 0 < size < _SEEDS_PER_BLOCK // 2:
        raise ValueError(f"embedded {split} size must be in [1, {_SEEDS_PER_BLOCK // 2}), got {size}")
    seen = set(exclude)
    examples = []
    # Repeated or excluded questions are skipped, so draw some spare ones.
    for example in _generated(split, seed, 2 * size + 100):
        if example.query not in seen:
            seen.add(example.query)
            examples.append(example)
            if len(examples) == size:
                return examples
    raise RuntimeError(f"embedded {split}: only {len(examples)} distinct problems in {2 * size + 100} draws")
