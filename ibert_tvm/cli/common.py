"""Helpers every command shares: progress bars and the check of an output directory."""

from __future__ import annotations

from ..errors import IBertTVMError


def progress(desc: str):
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, unit="batch", leave=False, disable=None)


def check_output_of(output, source, kind) -> None:
    """Before any work: the output must not be the input, and must be replaceable by an artifact of
    ``kind`` and writable (:func:`ibert_tvm.support.fs.check_output`)."""
    from pathlib import Path

    from ..support.fs import check_output

    if str(source) != "default" and Path(output).resolve() == Path(source).resolve():
        raise IBertTVMError(f"output {output} is the input directory: choose another output")
    check_output(output, kind)


def report_path(output, companions: str):
    """``-o/--output`` of a command that writes a JSON report with ``companions`` next to it."""
    from pathlib import Path

    out = Path(output)
    if out.suffix != ".json":
        raise IBertTVMError(f"--output {out} must end in .json ({companions} next to it)")
    if out.is_dir():
        raise IBertTVMError(f"--output {out} is a directory")
    return out
