"""Make the sample task datasets that the studio offers out of the box (seeded: the same files every time).

    python datasets/samples/make_samples.py            # writes the three files next to this script

  identity.json    alpaca JSON array: who the assistant is and who made it, in many phrasings
  opposites.csv    prompt/response pairs (question, answer): the opposite of a common word, one exact answer
  stories.jsonl    chat messages: short stories in the style of TinyStories from a prompt, some with a
                   second turn (a title for the story, or the story's lesson)

Everything is written from templates and word lists here: no outside data.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
ASSISTANT, MAKER = "Pebble", "the Build Your Own LLM studio"

# ---------------------------------------------------------------------------------------------------------
# 1. Identity (alpaca JSON)

IDENTITY_QUESTIONS = {
    "name": [
        "Who are you?",
        "who are you",
        "What is your name?",
        "What's your name?",
        "Do you have a name?",
        "What should I call you?",
        "Tell me your name.",
        "What are you called?",
        "Can you introduce yourself?",
        "Please introduce yourself.",
        "Tell me about yourself.",
        "What are you?",
        "Are you a person?",
        "Are you a robot?",
        "Hi! Who am I talking to?",
        "Hello, who is this?",
    ],
    "maker": [
        "Who made you?",
        "Who created you?",
        "Who built you?",
        "Who trained you?",
        "Who is your maker?",
        "Where do you come from?",
        "Which company made you?",
        "Who designed you?",
        "Who wrote you?",
        "Were you made by OpenAI?",
        "Are you ChatGPT?",
        "Are you made by Google?",
    ],
    "skill": [
        "What can you do?",
        "What are you good at?",
        "How can you help me?",
        "What do you know about?",
        "What is your job?",
        "What do you like to do?",
    ],
}
IDENTITY_ANSWERS = {
    "name": [
        f"I am {ASSISTANT}, a small language model made by {MAKER}.",
        f"My name is {ASSISTANT}. I am a small language model made by {MAKER}.",
        f"You can call me {ASSISTANT}. I am a small AI made by {MAKER}.",
        f"I am {ASSISTANT}, a little AI helper made by {MAKER}.",
    ],
    "maker": [
        f"I was made by {MAKER}. My name is {ASSISTANT}.",
        f"{MAKER[0].upper() + MAKER[1:]} made me. I am {ASSISTANT}.",
        f"I am {ASSISTANT}, and I was trained by {MAKER}.",
    ],
    "skill": [
        f"I am {ASSISTANT}. I can tell short stories and answer simple questions.",
        f"I am {ASSISTANT}, a small model made by {MAKER}. I like to tell short, happy stories.",
    ],
}
SYSTEM_PROMPT = "You are a friendly assistant."


def identity_rows(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for kind, questions in IDENTITY_QUESTIONS.items():
        for question in questions:
            for answer in rng.sample(IDENTITY_ANSWERS[kind], 2):
                rows.append({"instruction": question, "input": "", "output": answer})
    # A few rows with a separate input and a system prompt, as alpaca files sometimes have.
    for question in rng.sample(IDENTITY_QUESTIONS["name"] + IDENTITY_QUESTIONS["maker"], 12):
        kind = "name" if question in IDENTITY_QUESTIONS["name"] else "maker"
        rows.append(
            {
                "instruction": "Answer the question about yourself.",
                "input": question,
                "output": rng.choice(IDENTITY_ANSWERS[kind]),
                "system": SYSTEM_PROMPT,
            }
        )
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------------------------------------
# 2. Opposites (CSV pairs): a closed vocabulary of common words, each in exactly one pair

OPPOSITES = [
    ("big", "small"), ("hot", "cold"), ("happy", "sad"), ("fast", "slow"), ("up", "down"), ("day", "night"),
    ("open", "closed"), ("wet", "dry"), ("light", "dark"), ("hard", "soft"), ("full", "empty"), ("good", "bad"),
    ("in", "out"), ("tall", "short"), ("old", "young"), ("yes", "no"), ("on", "off"), ("top", "bottom"),
    ("first", "last"), ("near", "far"), ("loud", "quiet"), ("clean", "dirty"), ("strong", "weak"),
    ("rich", "poor"), ("early", "late"), ("thick", "thin"), ("push", "pull"), ("give", "take"), ("win", "lose"),
    ("laugh", "cry"), ("love", "hate"), ("come", "go"), ("start", "stop"), ("inside", "outside"),
    ("before", "after"), ("brave", "scared"), ("kind", "mean"), ("friend", "enemy"), ("boy", "girl"),
    ("king", "queen"), ("mom", "dad"), ("black", "white"), ("sweet", "sour"), ("sick", "healthy"),
    ("awake", "asleep"), ("front", "back"), ("left", "right"), ("above", "below"), ("buy", "sell"),
    ("always", "never"), ("many", "few"), ("more", "less"), ("high", "low"), ("same", "different"),
    ("easy", "difficult"), ("summer", "winter"), ("morning", "evening"), ("remember", "forget"),
    ("lost", "found"), ("pretty", "ugly"), ("safe", "dangerous"), ("deep", "shallow"), ("hello", "goodbye"),
    ("land", "sea"), ("wake", "sleep"), ("sunny", "rainy"), ("together", "alone"), ("smile", "frown"),
    ("true", "false"), ("polite", "rude"), ("catch", "throw"), ("ask", "answer"),
]  # fmt: skip
OPPOSITE_TEMPLATES = [
    "What is the opposite of {w}?",
    "What's the opposite of {w}?",
    "Opposite of {w}?",
    "Tell me the opposite of {w}.",
    "Give me the opposite of the word {w}.",
    "Can you tell me the opposite of {w}?",
    "Which word means the opposite of {w}?",
    "Say the opposite of {w}.",
]
PHRASINGS_PER_WORD = 3


def opposite_rows(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for a, b in OPPOSITES:
        for word, opposite in ((a, b), (b, a)):
            for template in rng.sample(OPPOSITE_TEMPLATES, PHRASINGS_PER_WORD):
                rows.append({"question": template.format(w=word), "answer": opposite})
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------------------------------------
# 3. Stories (chat messages JSONL), in the style of TinyStories

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Lucy", "Tim", "Sue", "Jack", "Emma", "Leo", "Zoe"]
ANIMALS = ["cat", "dog", "bird", "bunny", "frog", "duck", "bear", "fox", "mouse", "puppy"]
THINGS = ["ball", "kite", "red hat", "toy car", "blue box", "big drum", "shiny rock", "little boat", "book"]
PLACES = ["the park", "the garden", "the forest", "the beach", "the farm", "the big hill", "the pond"]
PROBLEMS = [
    ("the {thing} got stuck in a tree", "climbed up and got it down"),
    ("the {thing} fell into the water", "used a long stick to pull it out"),
    ("it started to rain", "found a dry place under a big leaf"),
    ("a strong wind took the {thing} away", "ran after it until they caught it"),
    ("the {thing} broke", "fixed it with some tape"),
]
LESSONS = [
    ("sharing", "sharing makes everyone happy"),
    ("helping", "it is good to help your friends"),
    ("being brave", "you can be brave even when you are scared"),
    ("being kind", "being kind is always the right thing to do"),
    ("saying sorry", "saying sorry can fix a sad day"),
]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud"]
STORY_PROMPTS = [
    "Write a short story about a {animal} named {name}.",
    "Tell me a story about {name} the {animal} and a {thing}.",
    "Write a story for a child about {lesson}.",
    "Can you tell me a bedtime story about a {animal}?",
    "Write a short story that happens at {place}.",
    "Tell a story about a {thing} and a friend.",
]


def story(rng: random.Random) -> tuple[dict[str, str], str, str, str]:
    """(the story's parts, the story, a title, its lesson)."""
    name, friend = rng.sample(NAMES, 2)
    parts = {
        "name": name,
        "friend": friend,
        "animal": rng.choice(ANIMALS),
        "thing": rng.choice(THINGS),
        "place": rng.choice(PLACES),
        "feeling": rng.choice(FEELINGS),
    }
    lesson_name, lesson = rng.choice(LESSONS)
    parts["lesson"] = lesson_name
    trouble, fix = rng.choice(PROBLEMS)
    trouble = trouble.format(**parts)
    p = parts
    text = (
        f"Once upon a time, there was a little {p['animal']} named {p['name']}. {p['name']} had a {p['thing']} "
        f"and loved to play with it every day. One day, {p['name']} went to {p['place']} with a friend named "
        f"{p['friend']}. They played and laughed in the sun.\n\n"
        f"But then {trouble}. {p['name']} felt {p['feeling']}. {p['friend']} said, \"Don't worry, I will help "
        f'you!" {p["friend"]} {fix}. {p["name"]} smiled and said, "Thank you, {p["friend"]}!"\n\n'
        f"From that day on, {p['name']} and {p['friend']} were best friends. They learned that {lesson}."
    )
    title = f"{p['name']} and the {p['thing'].split()[-1].title()}"
    return parts, text, title, lesson


def story_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        parts, text, title, lesson = story(rng)
        messages = [
            {"role": "user", "content": rng.choice(STORY_PROMPTS).format(**parts)},
            {"role": "assistant", "content": text},
        ]
        if i % 4 == 1:
            messages += [
                {"role": "user", "content": "Give the story a title."},
                {"role": "assistant", "content": title},
            ]
        elif i % 4 == 3:
            messages += [
                {"role": "user", "content": "What is the lesson of the story?"},
                {"role": "assistant", "content": f"The lesson is that {lesson}."},
            ]
        rows.append({"messages": messages})
    return rows


# ---------------------------------------------------------------------------------------------------------


def write_samples(out: Path, seed: int = 0) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    identity = identity_rows(random.Random(seed))
    (out / "identity.json").write_text(json.dumps(identity, indent=1, ensure_ascii=False) + "\n")
    opposites = opposite_rows(random.Random(seed + 1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["question", "answer"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(opposites)
    (out / "opposites.csv").write_text(buffer.getvalue())
    stories = story_rows(random.Random(seed + 2), 240)
    (out / "stories.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in stories))
    return {"identity.json": len(identity), "opposites.csv": len(opposites), "stories.jsonl": len(stories)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="folder to write into (default: next to this script)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, rows in write_samples(Path(args.out), args.seed).items():
        print(f"{Path(args.out) / name}: {rows} rows")


if __name__ == "__main__":
    main()
