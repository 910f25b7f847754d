"""Test helpers for the command lines: run one of scripts/ as its user would, in a fresh
interpreter; run `python -m harness.sweep` by its entry point; check a parser's options."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python scripts/<name> args...`, its output captured as text."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=timeout)


def documented_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Options of `parser` whose help is missing or too short to say anything, or that neither
    the README nor docs/ mention."""
    docs = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    docs += (ROOT / "README.md").read_text(encoding="utf-8")
    bad = []
    for action in parser._actions:  # argparse has no public list of its options
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if not action.help or len(action.help) < 20 or not any(
                flag in docs for flag in action.option_strings):
            bad.append(action.option_strings[0])
    return bad


def sweep_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`python -m harness.sweep args` run by its entry point in this process (exit code,
    stdout, stderr): the bad-input cases stop before any worker starts, so this is the CLI's
    whole path without an interpreter start per case (the subprocess tests cover that)."""
    from harness.sweep.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def sweep_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """`python -m harness.sweep args` by its entry point in this process, as a CompletedProcess:
    the sweep's own interpreter start is skipped, its workers are real processes as ever. Tests
    of what the parent process does on a signal, or of its interpreter, start it for real."""
    code, out, err = sweep_main(capsys, *args)
    return subprocess.CompletedProcess(["harness.sweep", *args], code, out, err)
