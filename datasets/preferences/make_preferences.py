"""Make the sample preference dataset for `python -m llm prefer` (seeded: the same files every time).

    python datasets/preferences/make_preferences.py     # writes the two files next to this script

  ask-back.jsonl        {prompt, chosen, rejected}: both answers say the same thing in one or two short
                        sentences, then the chosen one asks the user a question back ("Do you like cats
                        too?") where the rejected one ends with a plain statement ("They are very happy.").
                        The rule a user can check by eye: the preferred answer ends with a question.
  ask-back-test.jsonl   the same kind of pairs for prompts that are in neither split of ask-back.jsonl
                        (other names, animals and things): the honest test of what a tuned model learned

The words are the simple ones of children's stories, which the shipped base model was pretrained on.
Everything is written from the templates and word lists here: no outside data.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Sue", "Tim", "Lucy", "Jack", "Amy"]
TEST_NAMES = ["Zoe", "Bob", "Kate", "Leo"]
ANIMALS = ["cat", "dog", "bird", "fish", "frog", "bunny", "duck", "bear"]
TEST_ANIMALS = ["lion", "horse", "mouse"]
THINGS = ["ball", "kite", "car", "doll", "boat", "book", "hat", "truck"]
TEST_THINGS = ["drum", "cake", "box"]
PLACES = ["park", "garden", "forest", "house", "pond", "yard"]
COLORS = ["red", "blue", "green", "yellow", "pink"]
FEELINGS = ["happy", "kind", "brave", "little"]
ACTS = ["run", "jump", "play", "sing", "dance"]

# (prompt, the shared answer) templates; fields are filled from the word lists.
TOPICS = [
    ("Tell me about a {animal} named {name}.", "{name} is a {feeling} {animal}. {name} likes to {act} in the {place}."),
    ("What does {name} like to do in the {place}?", "{name} likes to {act} with a {thing} in the {place}."),
    ("Where does the {animal} of {name} live?", "The {animal} lives in the {place}. It is a nice home."),
    ("Tell me about the {color} {thing}.", "The {thing} is {color} and very pretty. {name} plays with it every day."),
    ("Who is the friend of {name} in the {place}?", "{name} has a {feeling} {animal} friend. They {act} together."),
    ("What color is the {thing} of {name}?", "The {thing} of {name} is {color}."),
]
# The chosen answer's last sentence: a question back to the user. The rejected answer's: a statement.
QUESTIONS = [
    "Do you like {animal}s too?",
    "What do you like to play with?",
    "Would you like to hear more?",
    "Do you have a friend like that?",
    "What is your favourite color?",
    "Can you {act} like that too?",
]
STATEMENTS = [
    "They are very happy.",
    "It was a good day.",
    "That is all.",
    "Everyone loves it.",
    "The sun is warm.",
    "It is fun to {act}.",
]


def make_pairs(rng: random.Random, names: list[str], animals: list[str], things: list[str], count: int) -> list[dict]:
    """count pairs with distinct prompts (the word lists allow a few more than asked for)."""
    pairs, seen = [], set()
    while len(pairs) < count:
        topic, answer = rng.choice(TOPICS)
        words = {
            "name": rng.choice(names),
            "animal": rng.choice(animals),
            "thing": rng.choice(things),
            "place": rng.choice(PLACES),
            "color": rng.choice(COLORS),
            "feeling": rng.choice(FEELINGS),
            "act": rng.choice(ACTS),
        }
        prompt = topic.format(**words)
        if prompt in seen:
            continue
        seen.add(prompt)
        body = answer.format(**words)
        question = rng.choice(QUESTIONS).format(**words)
        statement = rng.choice(STATEMENTS).format(**words)
        pairs.append({"prompt": prompt, "chosen": f"{body} {question}", "rejected": f"{body} {statement}"})
    return pairs


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{path}: {len(rows)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    write_jsonl(args.out / "ask-back.jsonl", make_pairs(rng, NAMES, ANIMALS, THINGS, 360))
    write_jsonl(args.out / "ask-back-test.jsonl", make_pairs(rng, TEST_NAMES, TEST_ANIMALS, TEST_THINGS, 60))


if __name__ == "__main__":
    main()
