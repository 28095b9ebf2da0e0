"""An engine timed in a process of its own, both sides of the hand-over: `in_fresh_process` (the
benchmark) writes a job, runs `python SCRIPT --worker JOB.json` and reads what `answer` (the
worker) leaves in result.json beside the job. For engines that bring their own OpenMP runtime
(CTranslate2), which slows torch's parallel regions when both run in one process. No torch here:
the CTranslate2 worker must not load it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULT = "result.json"


def in_fresh_process(script: str | Path, job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run `python SCRIPT --worker JOB.json` in a new process (this checkout first on its path) and
    return the JSON its `answer` left in result.json beside the job file."""
    job_file = Path(workdir) / "job.json"
    result = job_file.with_name(RESULT)
    result.unlink(missing_ok=True)
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, str(script), "--worker", str(job_file)], check=True, env=env)
    return json.loads(result.read_text(encoding="utf-8"))


def answer(job_file: Path, work: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The worker's side: the result of `work` on the job, into result.json beside the job file."""
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    Path(job_file).with_name(RESULT).write_text(json.dumps(work(job)), encoding="utf-8")
