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
    assert printed.startswith("(3, 32) float32 int32 0.")


def test_serving_examples_run_as_written(compiled_factory, tmp_path):
    """The Serving section's bash block: its first line starts the server (here on a free port,
    on the test's out/), every other command is a curl whose answer must be JSON without errors."""
    import json
    import os
    import socket
    import sys
    import time

    import httpx

    lines = _block("## Serving", "bash").replace("\\\n", " ").strip().splitlines()
    serve, curls = lines[0].split("#")[0].split(), [ln.split("  #")[0] for ln in lines[1:]]
    assert serve[:3] == ["ibert-tvm", "serve", "out/"] and "--host" not in serve
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = [a.replace("out/", str(compiled_factory("BertModel"))).replace("8080", port) for a in serve[1:]]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ibert_tvm", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        assert len(curls) == 3
        for cmd in curls:
            r = subprocess.run(["bash", "-c", cmd.replace("8080", port)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, (cmd, r.stderr)
            answer = json.loads(r.stdout)
            assert "error" not in answer if isinstance(answer, dict) else len(answer) == 2, (cmd, r.stdout)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


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
