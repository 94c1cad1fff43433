"""The README says what is true: its Python example runs as written, its opening block is the
two commands CI runs, and no doc tells a user to expose TVM's unauthenticated RPC."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(after_heading: str, lang: str) -> str:
    section = README.split(after_heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_python_api_example_runs_as_written(compiled_factory, capsys):
    code = _block("## Using a compiled model", "python")
    assert '"out/"' in code
    exec(compile(code.replace('"out/"', repr(str(compiled_factory("BertModel")))), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("(3, 32) int32 [")


def test_readme_opens_with_the_two_commands_ci_runs():
    assert README.startswith("# ibert-tvm\n\n```bash\n")
    commands = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(commands) == 2
    assert commands[0].startswith("./install.sh && ibert-tvm calibrate default")
    assert commands[1] == "./install.sh --test && python -m pytest -q"
    # .ci/run extracts exactly that block (no second copy of the commands to drift)
    r = subprocess.run(["bash", "-c", "awk '/^```bash$/ {f = 1; next} f && /^```$/ {exit} f' README.md"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines() == commands
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_no_doc_advises_binding_rpc_to_every_interface():
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("ibert_tvm/**/*.py")]
    offenders = [str(f.relative_to(ROOT)) for f in files if "--host 0.0.0.0" in f.read_text()]
    assert offenders == []
