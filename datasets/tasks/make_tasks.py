"""Make the task suite: seven small task families a user could plausibly upload, each about 150 rows, seeded.

    python datasets/tasks/make_tasks.py          # writes <family>.jsonl next to this script

Every family is written from templates and word lists here (no outside data), in the words of the stories
the base model was pretrained on. Each file is chat-messages JSONL; the held-out rows are the split that
fine-tuning keeps aside (llm.data.tasks.split_examples with FinetuneConfig's defaults), so `eval-task --split val`
scores rows no run trained on. Two families, `extract` and `reorder`, are kept out of every tuning decision
(HELD_OUT_FAMILIES): their figures are the honest ones.

  plural     word mapping: the plural of a noun (regular, -es, -ies and irregular forms)
  category   classification, 5 labels: is a word an animal, a food, a toy, a color or a place?
  feeling    classification, 3 labels: is the person in a sentence happy, sad or angry?
  where      question answering about a given sentence: where is the thing?
  extract    extraction: who got the thing in a sentence about giving       (held out of tuning decisions)
  reorder    format transformation: a list of three words, in reverse order  (held out of tuning decisions)
  name       multi-turn: remember the name the user gave two turns earlier
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELD_OUT_FAMILIES = ("extract", "reorder")
ROWS = 150

NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Sue", "Tim", "Lucy", "Jack", "Emma", "Leo", "Zoe",
         "Kim", "Bob", "Amy", "Dan", "Eva", "Joe", "Liz", "Ned", "Ola", "Pam", "Ray", "Sid", "Tess", "Ugo", "Val"]  # fmt: skip
THINGS = ["ball", "cat", "book", "hat", "cake", "toy", "kite", "doll", "cup", "box", "dog", "shoe", "car",
          "apple", "stick", "flower", "rock", "boat", "bike", "drum"]  # fmt: skip
PLACES = ["under the bed", "on the table", "in the box", "behind the door", "in the garden", "on the roof",
          "under the tree", "in the kitchen", "near the river", "in the park", "on the chair", "in the car"]  # fmt: skip

PLURALS = {
    "cat": "cats", "dog": "dogs", "ball": "balls", "book": "books", "hat": "hats", "cake": "cakes", "toy": "toys",
    "kite": "kites", "doll": "dolls", "cup": "cups", "shoe": "shoes", "car": "cars", "apple": "apples",
    "stick": "sticks", "flower": "flowers", "rock": "rocks", "boat": "boats", "bike": "bikes", "drum": "drums",
    "tree": "trees", "bird": "birds", "frog": "frogs", "duck": "ducks", "girl": "girls", "boy": "boys",
    "friend": "friends", "house": "houses", "door": "doors", "bed": "beds", "star": "stars", "cloud": "clouds",
    "box": "boxes", "fox": "foxes", "bus": "buses", "dress": "dresses", "glass": "glasses", "dish": "dishes",
    "brush": "brushes", "bench": "benches", "lunch": "lunches", "peach": "peaches", "watch": "watches",
    "baby": "babies", "puppy": "puppies", "bunny": "bunnies", "berry": "berries", "cherry": "cherries",
    "party": "parties", "story": "stories", "lady": "ladies", "city": "cities", "pony": "ponies",
    "mouse": "mice", "child": "children", "man": "men", "woman": "women", "foot": "feet", "tooth": "teeth",
    "goose": "geese", "sheep": "sheep", "fish": "fish", "leaf": "leaves", "wolf": "wolves", "knife": "knives",
    "shelf": "shelves", "loaf": "loaves", "tomato": "tomatoes", "potato": "potatoes", "hero": "heroes",
    "cookie": "cookies", "bear": "bears", "lion": "lions", "cow": "cows", "pig": "pigs", "horse": "horses",
    "sock": "socks", "coat": "coats", "spoon": "spoons", "plate": "plates", "chair": "chairs", "table": "tables",
    "window": "windows", "garden": "gardens", "park": "parks", "road": "roads", "hill": "hills", "pond": "ponds",
}  # fmt: skip
PLURAL_QUESTIONS = ["What is the plural of {w}?", "One {w}, two what?", "Give the plural of {w}.",
                    "What do you call more than one {w}?", "Plural of {w}?"]  # fmt: skip

CATEGORIES = {
    "animal": ["cat", "dog", "bird", "frog", "duck", "fox", "bear", "lion", "cow", "pig", "horse", "sheep",
               "mouse", "bunny", "puppy", "goose", "wolf", "fish", "owl", "turtle"],
    "food": ["cake", "apple", "bread", "soup", "cookie", "banana", "cheese", "carrot", "pie", "candy", "milk",
             "egg", "peach", "cherry", "berry", "pizza", "rice", "honey", "jam", "tomato"],
    "toy": ["ball", "doll", "kite", "drum", "teddy", "yo-yo", "puzzle", "robot", "blocks", "top", "car",
            "boat", "train", "truck", "balloon", "whistle", "rattle", "marbles", "puppet", "swing"],
    "color": ["red", "blue", "green", "yellow", "pink", "purple", "orange", "black", "white", "brown", "gray",
              "gold", "silver", "violet", "tan", "beige", "navy", "teal", "lime", "cream"],
    "place": ["park", "school", "garden", "beach", "forest", "house", "shop", "farm", "zoo", "city", "river",
              "lake", "hill", "town", "kitchen", "library", "castle", "village", "street", "field"],
}  # fmt: skip
CATEGORY_QUESTIONS = ["Is a {w} an animal, a food, a toy, a color or a place?",
                      "What kind of thing is {w}? Answer animal, food, toy, color or place.",
                      "Sort this word: {w}. Animal, food, toy, color or place?"]  # fmt: skip

FEELINGS = {
    "happy": ["{n} smiled and laughed all day.", "{n} got a new {t} and jumped for joy.",
              "{n} hugged mom and felt warm inside.", "{n} sang a happy song in the sun.",
              "{n} won the race and cheered."],
    "sad": ["{n} lost the {t} and cried.", "{n} sat alone and looked at the rain.",
            "{n} missed grandma very much.", "The {t} broke, and {n} felt like crying.",
            "{n} had no one to play with and frowned."],
    "angry": ["{n} stomped and shouted, \"No!\"", "{n} was mad that the {t} was taken.",
              "{n} yelled at the dog for eating the cake.", "{n} crossed arms and would not talk.",
              "{n} threw the {t} on the floor in a fit."],
}  # fmt: skip
FEELING_QUESTIONS = ["{s} How does {n} feel: happy, sad or angry?", "{s} Is {n} happy, sad or angry?"]

WHERE_TEMPLATES = ["The {t} is {p}. Where is the {t}?", "{n} put the {t} {p}. Where is the {t} now?",
                   "{n} looked for the {t} and found it {p}. Where was the {t}?"]  # fmt: skip
EXTRACT_TEMPLATES = ["{a} gave the {t} to {b}. Who got the {t}?", "{a} handed {b} a {t}. Who got the {t}?",
                     "The {t} was a gift from {a} to {b}. Who got the gift?"]  # fmt: skip
REORDER_QUESTIONS = ["Say these words in reverse order: {x}.", "Reverse the list: {x}.",
                     "Write {x} backwards, word by word."]  # fmt: skip


def plural(rng: random.Random) -> list[dict]:
    words = sorted(PLURALS)
    rows = []
    for i in range(ROWS):
        word = words[i % len(words)]
        rows.append(pair(rng.choice(PLURAL_QUESTIONS).format(w=word), PLURALS[word]))
    return rows


def category(rng: random.Random) -> list[dict]:
    items = [(w, label) for label, words in CATEGORIES.items() for w in words]
    rng.shuffle(items)
    return [pair(rng.choice(CATEGORY_QUESTIONS).format(w=w), label) for w, label in (items * 2)[:ROWS]]


def feeling(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(ROWS):
        label = rng.choice(sorted(FEELINGS))
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        sentence = rng.choice(FEELINGS[label]).format(n=name, t=thing)
        rows.append(pair(rng.choice(FEELING_QUESTIONS).format(s=sentence, n=name), label))
    return rows


def where(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(ROWS):
        place, thing, name = rng.choice(PLACES), rng.choice(THINGS), rng.choice(NAMES)
        rows.append(pair(rng.choice(WHERE_TEMPLATES).format(t=thing, p=place, n=name), place))
    return rows


def extract(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(ROWS):
        a, b = rng.sample(NAMES, 2)
        rows.append(pair(rng.choice(EXTRACT_TEMPLATES).format(a=a, b=b, t=rng.choice(THINGS)), b))
    return rows


def reorder(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(ROWS):
        words = rng.sample(THINGS, 3)
        question = rng.choice(REORDER_QUESTIONS).format(x=", ".join(words))
        rows.append(pair(question, ", ".join(reversed(words))))
    return rows


def name(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(ROWS):
        person, thing = rng.choice(NAMES), rng.choice(THINGS)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Hi! My name is {person}."},
                    {"role": "assistant", "content": f"Hello, {person}! Nice to meet you."},
                    {"role": "user", "content": rng.choice([f"I like my {thing}.", f"Do you like my {thing}?"])},
                    {"role": "assistant", "content": f"A {thing} is a fine thing to have."},
                    {"role": "user", "content": rng.choice(["What is my name?", "Do you remember my name?"])},
                    {"role": "assistant", "content": person},
                ]
            }
        )
    return rows


def pair(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


FAMILIES: dict[str, Callable[[random.Random], list[dict]]] = {
    "plural": plural,
    "category": category,
    "feeling": feeling,
    "where": where,
    "extract": extract,
    "reorder": reorder,
    "name": name,
}


def write(out: Path, seed: int = 0) -> list[Path]:
    paths = []
    for index, (family, make) in enumerate(FAMILIES.items()):
        rows = make(random.Random(seed * 1000 + index))
        path = out / f"{family}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE), help="folder for the .jsonl files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write(Path(args.out), args.seed):
        print(f"{path}: {sum(1 for _ in path.open())} rows")
