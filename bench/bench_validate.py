"""How fast is validate_chat_jsonl next to just parsing the file? One run, one file, the ratio printed.

    .venv/bin/python bench/bench_validate.py                 # 100k conversations, ~100 MB, in a temp folder
    .venv/bin/python bench/bench_validate.py --records 20000 --model outputs/models/SmolLM2-135M-Instruct

Writes a seeded synthetic chat JSONL file (mostly well-formed multi-turn chats, plus a few duplicates and a few
broken lines, as real exports have), then times, alternating, ``--repeats`` times each:

- bare: ``json.loads`` on every line of the file, nothing else;
- validate: the component's own ``validate()`` + chatft.data_report's ``build_report()`` on the same file: every
  rule but token counting, duplicate detection included, valid_data and rejected.jsonl written.

It prints the best time of each and their ratio (the goal: at most 2.0), in wall-clock and in CPU time (which other
processes on a busy machine disturb less), then, given a model (``--model``, or the
converted local SmolLM2 under outputs/models/ when present), times token counting (chat template + fast tokenizer
in batches, as the component does with base_model) on the first ``--token_records`` valid conversations.
Timings on a shared machine are noisy: compare the ratio, which is taken within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from chatft.data_report import build_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "components" / "validate_chat_jsonl" / "validate_chat_jsonl.py"
LOCAL_MODEL = REPO / "outputs" / "models" / "SmolLM2-135M-Instruct"
WORDS = (  # noqa: SIM905 (one readable string, not 50 lines of list)
    "the router light is red and my internet keeps dropping every evening what should I check first please help "
    "restart unplug wait thirty seconds cable modem wifi signal bill invoice plan upgrade speed slow fast fiber "
    "technician visit appointment password reset account app settings page menu support ticket outage area"
).split()
BROKEN_LINES = (  # one of each kind a real export tends to have
    b'{"messages": [{"role": "user", "content": "cut off in the mid',
    b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}',
    b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": null}]}',
    b'{"messages": [{"role": "user", "content": "Only a question?"}]}',
    b'{"prompt": "Hi", "completion": "Hello"}',
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="conversations in the file (~1 KB each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each pass; the best counts")
    parser.add_argument("--model", type=Path, default=None, help="model folder whose tokenizer counts tokens")
    parser.add_argument("--token_records", type=int, default=10_000, help="conversations to tokenize")
    parser.add_argument("--max_seq_length", type=int, default=2048)
    return parser.parse_args(argv)


def _load_component():
    spec = importlib.util.spec_from_file_location("validate_chat_jsonl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_synthetic(path: Path, records: int, seed: int) -> dict:
    """~1 KB conversations: a system prompt, 1-3 user/assistant turns; 0.5% exact repeats, 0.1% broken lines."""
    rng = random.Random(seed)
    kept: list[bytes] = []
    counts = {"records": records, "duplicates": 0, "broken": 0}
    with open(path, "wb") as out:
        for index in range(records):
            roll = rng.random()
            if roll < 0.001:
                line = rng.choice(BROKEN_LINES)
                counts["broken"] += 1
            elif roll < 0.006 and kept:
                line = rng.choice(kept)
                counts["duplicates"] += 1
            else:
                messages = [{"role": "system", "content": "You are a support assistant. " + _words(rng, 8, 16)}]
                for turn in range(rng.randint(1, 3)):
                    messages.append({"role": "user", "content": f"[{index}.{turn}] {_words(rng, 5, 30)}?"})
                    messages.append({"role": "assistant", "content": f"{_words(rng, 10, 80)}."})
                line = json.dumps({"messages": messages}, ensure_ascii=False).encode()
                if len(kept) < 1000:
                    kept.append(line)
            out.write(line + b"\n")
    counts["megabytes"] = round(path.stat().st_size / 1e6, 1)
    return counts


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def bare_pass(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of json.loads on every line."""
    loads = json.loads
    wall, cpu = time.perf_counter(), time.process_time()
    with open(path, "rb") as handle:
        for line in handle:
            try:  # noqa: SIM105 (contextlib.suppress would add a context manager per line to the baseline)
                loads(line)
            except ValueError:
                pass
    return time.perf_counter() - wall, time.process_time() - cpu


def validate_pass(component, path: Path, out: Path) -> tuple[float, float, dict]:
    """Wall and CPU seconds of the component's validation (outputs written), and its report."""
    outputs = {"valid_data": out / "valid", "rejected_data": out / "rejected", "data_report": out / "report"}
    args = component.parse_args(["--input_data", str(path), *(f"--{name}={value}" for name, value in outputs.items())])
    wall, cpu = time.perf_counter(), time.process_time()
    report = build_report(component.validate(args), args)
    return time.perf_counter() - wall, time.process_time() - cpu, report


def token_pass(component, path: Path, model: Path, records: int, max_seq_length: int) -> tuple[float, float, dict]:
    """Seconds to load the tokenizer, seconds to count tokens of the first ``records`` valid conversations."""
    start = time.perf_counter()
    counter = component.TokenCounter(model, max_seq_length)
    loaded = time.perf_counter() - start
    validator = component.ChatValidator()
    lines = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if validator.check_line(line, path.name, number).accepted:
                lines.append((number, line))
                if len(lines) == records:
                    break
    start = time.perf_counter()
    for number, line in lines:
        counter.add(path.name, number, line, False)
    counter.flush()
    return loaded, time.perf_counter() - start, counter.report()


def main(args: argparse.Namespace) -> None:
    component = _load_component()
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'unknown CPU'}")
    with tempfile.TemporaryDirectory(prefix="bench_validate_") as tmp:
        data = Path(tmp) / "chats.jsonl"
        made = write_synthetic(data, args.records, args.seed)
        print(
            f"data: {made['records']} lines, {made['megabytes']} MB "
            f"({made['duplicates']} repeats, {made['broken']} broken lines)"
        )
        bare_times, validate_times = [], []
        for repeat in range(args.repeats):
            bare_times.append(bare_pass(data))
            *seconds, report = validate_pass(component, data, Path(tmp) / f"out{repeat}")
            validate_times.append(tuple(seconds))
            shutil.rmtree(Path(tmp) / f"out{repeat}")
        print(
            f"validate: {report['records_valid']} valid, {report['records_rejected']} rejected, "
            f"{report['rules']['duplicate']['records']} duplicates"
        )
        for clock, index in (("wall", 0), ("CPU", 1)):
            bare = min(times[index] for times in bare_times)
            full = min(times[index] for times in validate_times)
            print(
                f"{clock:>4} time: bare json.loads pass {bare:.3f} s, full validation {full:.3f} s, "
                f"ratio {full / bare:.2f} (goal <= 2.0; best of {args.repeats} each)"
            )

        model = args.model or (LOCAL_MODEL if LOCAL_MODEL.is_dir() else None)
        if model is None:
            print("token counting: skipped (pass --model, or run `make run` once to convert the local SmolLM2)")
            return
        loaded, seconds, tokens = token_pass(component, data, model, args.token_records, args.max_seq_length)
        counted = min(args.token_records, report["records_valid"])
        print(
            f"token counting ({tokens['counted_with']}): tokenizer loaded in {loaded:.2f} s; {counted} conversations, "
            f"{tokens['total']} tokens in {seconds:.2f} s ({counted / seconds:.0f} conversations/s, "
            f"{tokens['total'] / seconds / 1e6:.2f} M tokens/s)"
        )


if __name__ == "__main__":
    main(parse_args())
