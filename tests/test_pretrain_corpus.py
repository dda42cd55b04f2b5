"""datasets/make_pretrain_corpus.py: stories split, kept once, kept apart from the validation text."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "datasets" / "make_pretrain_corpus.py"


def corpus_module():
    spec = importlib.util.spec_from_file_location("make_pretrain_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_layouts_split_into_the_same_stories():
    corpus = corpus_module()
    samples_layout = "Tom ran.\n\nHe was glad.\nLily sat.\n"
    upstream_layout = "Tom ran.\nHe was glad.\n<|endoftext|>\nLily sat.\n<|endoftext|>\n"
    expected = ["Tom ran.\n\nHe was glad.", "Lily sat."]
    assert corpus.split_stories(samples_layout) == corpus.split_stories(upstream_layout) == expected


def test_repeats_and_stories_sharing_a_validation_paragraph_are_left_out():
    corpus = corpus_module()
    cased = "Tom had a red ball and he liked it very much.\n"
    lower = cased.lower() + "spot saw the shiny car and said that it was so very bright and clean.\n"
    extra = "<|endoftext|>".join(
        [
            "tom had a red ball and he liked it very much.",  # the same story as the cased one: a repeat
            "Sue found a cat.\n\nSpot saw the shiny car and said that it was so very bright and clean.",
            "Ben liked his dog. \u201cHi,\u201d he said. It\u2019s â€œfunâ€!",
        ]
    )
    excluded = "Spot saw the shiny car and said that it was so very bright and clean.\n\nThe end.\n"
    stories, counts = corpus.build(cased, lower, [extra], excluded, {"tom"}, mojibake_share=0.0)
    assert counts == {"kept": 2, "repeated": 1, "excluded": 2}
    assert stories[0] == "Tom had a red ball and he liked it very much."
    assert stories[1] == 'Ben liked his dog. "Hi," he said. It\'s "fun"!'


def test_a_lowercase_file_gets_its_case_back_and_the_mojibake_share_keeps_some():
    corpus = corpus_module()
    lower_extra = "\n".join(f"tom saw bird {i}. he said, â€œhi!â€" for i in range(400))
    stories, _ = corpus.build("", "", [lower_extra], "", {"tom"}, mojibake_share=0.25)
    assert all(story.startswith("Tom saw bird") and ', "Hi!' in corpus.repair(story) for story in stories)
    kept = sum("â€" in story for story in stories)
    assert 60 <= kept <= 140, kept  # about a quarter of 400, chosen by hash
    again, _ = corpus.build("", "", [lower_extra], "", {"tom"}, mojibake_share=0.25)
    assert again == stories
