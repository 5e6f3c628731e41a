"""CI runs the README's commands: the install and test lines in .ci/run appear verbatim in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_the_readme_training_recipe_runs_as_written(tmp_path: Path) -> None:
    """The README's training block, line by line in bash, offline (QCAT_BASE_MODEL=tiny-qwen3, as it says): baseline,
    train, eval on the test set, register and promote; each line exits 0 and leaves what the next one needs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Training", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    (tmp_path / "data").symlink_to(ROOT / "data")
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]  # this venv's `qcat`
    env = {**os.environ, "QCAT_BASE_MODEL": "tiny-qwen3", "QCAT_DTYPE": "float32", "PATH": path}
    for line in block.strip().splitlines():
        done = subprocess.run(["bash", "-ec", line], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{line}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    assert json.loads((tmp_path / "reports" / "trec6-v1" / "metrics.json").read_text())["examples"] == 500
    assert (tmp_path / "registry" / "current.json").is_file()
