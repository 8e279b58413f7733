"""The README's promises: its screenshot is drawn by docs/make_screenshot.py from the real TUI, and every
link, file and command it names exists."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
sys.path.insert(0, str(ROOT / "docs"))

import make_screenshot  # noqa: E402


def code() -> list[str]:
    """Every line of the README's code blocks and every inline code span, one string each."""
    fence = r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```"  # also the indented blocks of numbered steps
    blocks = re.findall(fence, README, flags=re.S | re.M)
    prose = re.sub(fence, "", README, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", prose)


def commands(program: str) -> set[tuple[str, ...]]:
    """The distinct `program WORD WORD...` invocations in code: the lowercase words after the program
    (subcommands, actions, names), up to the first flag, placeholder, path or comment."""
    found = set()
    for line in code():
        for match in re.finditer(rf"(?:^|(?<=[\s/]))(?<!-u ){program}((?:[ \t]+\S+)+)", line):
            words = []
            for token in match.group(1).split():
                if not words and token == program:  # `sudo -u assistant assistant doctor`
                    continue
                if not re.fullmatch(r"[a-z][a-z0-9-]*", token):
                    break
                words.append(token)
            if words:
                found.add(tuple(words))
    return found


def exit_code(main, argv: list[str]) -> int:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return main(argv) or 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1


def test_the_screenshot_is_the_review_view_of_the_real_app(tmp_path):
    out = make_screenshot.make_screenshot(tmp_path / "shot.svg")
    svg = out.read_text(encoding="utf-8")
    assert svg.startswith("<svg")
    shown = "".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg)).replace("&#160;", " ")
    for text in ("review", "showing all rows", "#  time", "kind", "score  label", "detection", "near miss",
                 "right", "false alarm", "missed", "y right · n false alarm", "q quit", "clip rescored by model"):
        assert text in shown, f"{text!r} not on the screen: {shown}"
    assert "(docs/tui-review.svg)" in README and (ROOT / "docs" / "tui-review.svg").is_file()


def test_every_relative_link_and_image_exists():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links
    for link in links:
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = link.partition("#")
        if not path:  # a section of this README
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.+)$", README, flags=re.M)}
            assert anchor in slugs, f"no section #{anchor}"
            continue
        assert (ROOT / path).exists(), f"README links to {path}, which does not exist"


def test_every_file_script_and_module_named_exists():
    text = "\n".join(code())
    benches = set(re.findall(r"bench/(\w+\.py)", README))
    assert {"sda_seed.py", "kws_eval.py", "fl_sim.py"} <= benches
    for name in benches:
        assert (ROOT / "bench" / name).is_file(), f"bench/{name}"
    for tool in set(re.findall(r"\.venv/bin/([\w.-]+)", text)):
        assert (ROOT / ".venv" / "bin" / tool).exists() or tool == "python", f".venv/bin/{tool}"
    for module in set(re.findall(r"python -m ([\w.]+)", text)):
        assert importlib.util.find_spec(module) is not None, f"python -m {module}"
    for path in re.findall(r"(?<![\w/.])((?:systemd|docs|models|bench|tests)/[\w./-]*\w)", text):
        assert (ROOT / path).exists(), path


@pytest.mark.parametrize("program", ["assistant", "sda"])
def test_every_command_named_answers_help(program):
    from assistant.cli import main as assistant_main
    from sda.cli import main as sda_main

    main = {"assistant": assistant_main, "sda": sda_main}[program]
    named = commands(program)
    assert named, f"no `{program} ...` command found in the README"
    if program == "assistant":
        assert ("doctor",) in named and ("tui",) in named and ("coordinator",) in named
    else:
        assert ("ledger", "stake") in named and ("admin", "add-clerk") in named
    failed = [" ".join(words) for words in sorted(named) if exit_code(main, [*words, "--help"]) != 0]
    assert not failed, f"`{program} ... --help` fails for: {failed}"
