"""CI runs the README's commands: the install and test lines in .ci/run appear verbatim in the README."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_commands() -> None:
    """Every command after a `# install (README)` / `# test (README)` marker in .ci/run is in the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [lines[i + 1] for i, line in enumerate(lines) if line.endswith("(README)")]
    assert len(commands) == 2
    for command in commands:
        assert f"\n{command}\n" in readme, command
