"""The README and the guides say what the product does today: a short front page, links that resolve,
commands that exist, one-line examples, and headline figures equal to the benchmark files they cite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BENCHMARKS = DOCS / "benchmarks"
MAX_README_LINES = 200

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto: ...


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where a link is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def resolve(page: Path, target: str) -> Path | None:
    """The file a relative link points to, or None for external and same-page links."""
    path = target.split("#", 1)[0]
    if EXTERNAL.match(target) or not path:
        return None
    return (page.parent / path).resolve()


def section(text: str, heading: str) -> str:
    """The text under a '## heading' line, up to the next heading of that level or above."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^#{{1,2}} |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in ``text``, cells stripped (escaped pipes kept)."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
    header, separator, *body = rows
    assert all(set(cell) <= set(":- ") for cell in separator), f"not a table: {header}"
    return body


README_TEXT = README.read_text(encoding="utf-8")


# --- the front page -----------------------------------------------------------------------------------

def test_readme_is_short():
    lines = len(README_TEXT.splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; the front page keeps to {MAX_README_LINES}"


def test_the_first_commands_are_make_demo_and_make_test():
    blocks = code_blocks(README_TEXT)
    assert blocks, "README.md has no code block"
    commands = [line.split("#", 1)[0].strip() for line in blocks[0][1].splitlines()]
    assert "make demo" in commands and "make test" in commands, f"first code block: {blocks[0][1]!r}"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        path = resolve(page, target)
        if path is not None and not path.is_file():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_readme_links_every_guide_and_benchmark_page():
    linked = {resolve(README, target) for target in links(README_TEXT)}
    pages = [*DOCS.glob("*.md"), *BENCHMARKS.glob("*.md")]
    missing = sorted(str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked)
    assert not missing, f"README.md does not link {missing}"


# --- the command table --------------------------------------------------------------------------------

def table_commands() -> list[list[str]]:
    commands = []
    for row in table_rows(section(README_TEXT, "Commands")):
        match = re.fullmatch(r"`weldstream ([a-z -]+)`", row[0])
        assert match, f"the command table's first column names a command in backticks, not {row[0]!r}"
        commands.append(match.group(1).split())
    return commands


COMMANDS = table_commands()


def test_the_command_table_lists_every_command():
    from weldstream.cli import BENCHMARKS as BENCH_COMMANDS
    from weldstream.cli import COMMANDS as CLI_COMMANDS

    expected = {(name,) for name in CLI_COMMANDS if name != "bench"} | {("bench", b) for b in BENCH_COMMANDS}
    assert {tuple(words) for words in COMMANDS} == expected


def help_text(words: list[str], capsys, monkeypatch) -> str:
    """`weldstream WORDS --help` in this process (the entry point itself is run once below); only the
    command's own room is imported, as in a real call."""
    from weldstream.cli import main

    for name in [k for k in os.environ if k.startswith("WELDSTREAM_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0, f"weldstream {' '.join(words)} --help: {capsys.readouterr().err[-2000:]}"
    return capsys.readouterr().out


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_command_in_the_table_answers_help(words: list[str], capsys, monkeypatch):
    assert "usage: weldstream" in help_text(words, capsys, monkeypatch)


def test_the_installed_command_answers_help():
    done = subprocess.run([sys.executable, "-m", "weldstream.cli", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0 and "usage: weldstream" in done.stdout, done.stderr[-2000:]
    assert all(words[0] in done.stdout for words in COMMANDS)


# --- documented examples ------------------------------------------------------------------------------

def test_examples_are_one_line_each_without_prompts():
    for page in markdown_files():
        for _info, body in code_blocks(page.read_text(encoding="utf-8")):
            for line in body.splitlines():
                assert not line.lstrip().startswith("$ weldstream"), f"{page}: drop the prompt in {line!r}"
                if line.lstrip().startswith("weldstream"):
                    assert not line.rstrip().endswith("\\"), f"{page}: keep {line!r} on one line"


# --- the headline figures -----------------------------------------------------------------------------

def cl_acc(strategy: str) -> Callable[[Any], str]:
    def read(results: Any) -> str:
        mean, std = results["summary"][strategy]["metrics"]["acc"]
        return f"{mean:.1f} ± {std:.1f}"
    return read


def serving_ratio(results: Any) -> str:
    return f"{results['ratios']['grpc_over_eager_fp32_forward']:.2f}×"


def soak(results: Any) -> dict[str, Any]:
    rows = [r for r in results["results"] if r["fault"].startswith("soak 32 clients")]
    assert len(rows) == 1, "faults.json has no single 'soak 32 clients' row"
    return rows[0]["figures"]


def swaps_without_failures(results: Any) -> str:
    f = soak(results)
    return f"{int(f['swaps'])} swaps, {int(f['requests']):,} requests, {int(f['errors'])} failed"


def fault_suite(results: Any) -> str:
    passed = sum(1 for r in results["results"] if r["passed"])
    return f"{passed} of {len(results['results'])} pass ({results['mode']} run)"


def long_regime_gain(results: Any) -> str:
    """The default's ACC minus replay's, paired by seed (replay's stored difference is replay - default)."""
    mean, half = results["summary"]["replay"]["paired_to_default"]["acc"]
    return f"{-mean:+.1f} ± {half:.1f} ({results['summary']['replay']['paired_seeds']} seeds)"


def naive_forgetting(results: Any) -> str:
    mean, std = results["summary"]["naive"]["metrics"]["bwt"]
    return f"{mean:.1f} ± {std:.1f}".replace("-", "−")


FLIP_ROW = "flip+gamma+noise+16-bit"


def adapt_flip_share(results: Any) -> str:
    """The flip/gamma/noise/16-bit export of the first source: served share of the source's mIoU, 0 -> 32 scans."""
    source = results["sources"][0]
    base = source["served_source_miou"]
    row = next(r for r in source["rows"] if r["name"] == FLIP_ROW)
    return f"{row['miou']['0'] / base:.0%} → {row['miou']['32'] / base:.0%}".replace("%", " %")


def adapt_gain_curves(results: Any) -> str:
    """The depth-gain ramp and the dose gradient, served mIoU 0 -> 32 unlabeled scans (their gain curves)."""
    rows = {row["name"]: row for source in results["sources"] for row in source["rows"]}
    return " / ".join(f"{rows[name]['miou']['0'] * 100:.1f} → {rows[name]['miou']['32'] * 100:.1f}"
                      for name in ("depth-gain", "dose-gradient"))


def adapt_gain_and_statistics(results: Any) -> str:
    """The depth-gain ramp behind a blur, served mIoU 0 -> 32 unlabeled scans (its gain curve and its own
    statistics), and the BatchNorm oracle without a curve."""
    row = next(row for source in results["sources"] for row in source["rows"] if row["name"] == "depth-gain+blur")
    return f"{row['miou']['0'] * 100:.1f} → {row['miou']['32'] * 100:.1f} ({row['oracle'] * 100:.1f})"


def adapt_targets(results: Any) -> str:
    held = sum(1 for target in results["targets"] if target["holds"])
    return f"{held} of {len(results['targets'])}"


def adapt_label_gain(results: Any) -> str:
    """The rig's own statistics minus the version's after k labels, mean over every source's transform rigs."""
    rows = [row for source in results["sources"] for row in source["labels"]]
    gains = [sum(row["by_labels"][str(k)]["rig_statistics"] - row["by_labels"][str(k)]["version_statistics"]
                 for row in rows) / len(rows) * 100 for k in results["config"]["labels"]]
    return (" / ".join(f"{g:+.1f}" for g in gains) + " points").replace("-", "−")


def first_minutes(results: Any) -> str:
    return (f"{results['new_versions_served']} versions, {results['failed_calls']} failed, "
            f"{results['freshness_median_s']:.1f} s")


# (what the row's first cell names, the benchmark page it links, the data file that page cites, the figure)
HEADLINES: list[tuple[str, str, str, Callable[[Any], str]]] = [
    ("serving", "serve.md", "serve-cpu/256/results.json", serving_ratio),
    ("hot swaps", "faults.md", "faults/faults.json", swaps_without_failures),
    ("fault suite", "faults.md", "faults/faults.json", fault_suite),
    ("a new installation", "first-minutes.md", "first-minutes/results.json", first_minutes),
    ("`replay-gem`", "cl.md", "cl/results.json", cl_acc("replay-gem")),
    ("`replay`", "cl.md", "cl/results.json", cl_acc("replay")),
    ("`offline-joint`", "cl.md", "cl/results.json", cl_acc("offline-joint")),
    ("long regime (600 steps", "cl.md", "cl-long/results.json", long_regime_gain),
    ("`naive`", "cl.md", "cl-long/results.json", naive_forgetting),
    ("a new rig's flip", "adapt.md", "adapt/results.json", adapt_flip_share),
    ("a depth-gain ramp on a B-scan", "adapt.md", "adapt/results.json", adapt_gain_curves),
    ("a depth-gain ramp behind a blurring probe", "adapt.md", "adapt/results.json", adapt_gain_and_statistics),
    ("`bench adapt` targets", "adapt.md", "adapt/results.json", adapt_targets),
    ("after the rig's first labels", "adapt.md", "adapt/results.json", adapt_label_gain),
]
HEADLINE_ROWS = table_rows(section(README_TEXT, "Latest figures"))


def test_every_headline_row_is_checked():
    assert len(HEADLINE_ROWS) == len(HEADLINES), [row[0] for row in HEADLINE_ROWS]


@pytest.mark.parametrize("key, page, data, figure", HEADLINES, ids=[h[0].strip("`") for h in HEADLINES])
def test_headline_figure_matches_the_file_its_page_cites(key: str, page: str, data: str,
                                                         figure: Callable[[Any], str]):
    rows = [row for row in HEADLINE_ROWS if key in row[0]]
    assert len(rows) == 1, f"{len(rows)} headline rows name {key!r}"
    label, printed, details = rows[0]
    page_path, data_path = BENCHMARKS / page, BENCHMARKS / data
    assert page_path.resolve() in {resolve(README, t) for t in links(details)}, f"{label!r} must link {page}"
    cited = {resolve(page_path, t) for t in links(page_path.read_text(encoding="utf-8"))}
    assert data_path.resolve() in cited, f"{page} must link the file it takes its figures from, {data}"
    expected = figure(json.loads(data_path.read_text(encoding="utf-8")))
    assert printed == expected, f"README says {printed!r} for {label!r}; {data} says {expected!r}"
