"""Test helpers for the command lines: run one of scripts/ as its user would, in a fresh
interpreter; run `python -m harness.sweep` by its entry point; check a parser's options."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
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


def cli_here(capsys: pytest.CaptureFixture, main: Callable[[list[str]], int],
             *args: str) -> subprocess.CompletedProcess:
    """A command line run by its entry point `main` in this process, as a CompletedProcess
    (exit code, stdout, stderr): the interpreter start is skipped, nothing else. Tests of what a
    process does on a signal, or of its interpreter, start it for real."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess([getattr(main, "__module__", "main"), *args], code,
                                       out.out, out.err)


def sweep_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """`python -m harness.sweep args` in this process; its workers are real processes."""
    from harness.sweep.cli import main

    return cli_here(capsys, main, *args)


def report_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """`python -m harness.report args` in this process."""
    from harness.report.cli import main

    return cli_here(capsys, main, *args)


def evaluate_here(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """`python -m harness.evaluate args` in this process."""
    from harness.evaluate.cli import main

    return cli_here(capsys, main, *args)
