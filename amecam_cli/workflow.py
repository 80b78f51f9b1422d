"""Running a bundle's config: in this process with MONAI's ``ConfigWorkflow``, or in ``torchrun`` processes.

``run_config`` is what ``python -m monai.bundle run`` does, inside amecam (its results come back as
Python objects, its errors as :class:`AmecamError`). With ``nproc_per_node`` > 1 it starts ``torchrun``
instead, one process per GPU with DistributedDataParallel (the bundle's ``configs/multi_gpu_train.yaml``),
and relays the processes' log lines through amecam's loggers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from .bundle import _purge_scripts_modules
from .errors import AmecamError, one_line_reason

__all__ = ["MULTI_GPU_CONFIG", "check_nproc_per_node", "run_config", "run_config_torchrun"]

logger = logging.getLogger(__name__)

#: the bundle config added to a training config to run it in several processes
MULTI_GPU_CONFIG = "multi_gpu_train.yaml"


def check_nproc_per_node(nproc: Any, device: Any) -> int:
    """``--nproc_per_node`` as a whole number >= 1 that this machine can run (at most one process per GPU)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise AmecamError(f"--nproc_per_node must be a whole number >= 1 (training processes, one per GPU), got {nproc!r}")
    from amecam_bundle.scripts.distributed import launched_by_torchrun

    if launched_by_torchrun():  # every process would slice the data and write the same bundle
        raise AmecamError(f"amecam starts its own training processes: run it once, with --nproc_per_node N, not under torchrun "
                          f"(WORLD_SIZE is {os.environ.get('WORLD_SIZE')})")
    if nproc > 1 and device.type == "cuda":
        import torch

        if device.index is not None:
            raise AmecamError(f"--nproc_per_node {nproc} gives each process its own GPU: use --device cuda (or auto), not {device}")
        if nproc > torch.cuda.device_count():
            raise AmecamError(f"--nproc_per_node must be at most the number of GPUs ({torch.cuda.device_count()}), got {nproc}")
    if nproc > 1 and device.type == "cpu":
        logger.warning("--nproc_per_node %d on the CPU: the processes share its cores (2 processes on 2 cores took 1.2x as long "
                       "as one, docs/benchmarks.md section 7); it is meant for several GPUs", nproc)
    return nproc


@contextlib.contextmanager
def _bundle_on_path(root: Path) -> Iterator[None]:
    """Make ``import scripts`` mean ``root/scripts`` for the duration (what ``monai.bundle run`` does)."""
    _purge_scripts_modules()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        while str(root) in sys.path:
            sys.path.remove(str(root))
        _purge_scripts_modules()


def run_config(root: Path, config: str, *, nproc_per_node: int = 1, summary: Path | None = None, **overrides: Any) -> list[Any]:
    """Run ``root/configs/<config>`` with MONAI's ``ConfigWorkflow`` and return what its ``run`` gave.

    With ``nproc_per_node`` > 1 it runs in that many ``torchrun`` processes instead (see
    :func:`run_config_torchrun`), and returns the stage's ``summary`` file, read back, as the last entry.
    """
    if nproc_per_node > 1:
        run_config_torchrun(root, config, nproc_per_node, **overrides)
        return [json.loads(summary.read_text(encoding="utf-8"))] if summary is not None else []
    import yaml
    from monai.bundle import ConfigWorkflow

    with _bundle_on_path(root):
        # MONAI's bundle loggers print their own set-up chatter ("No workflow type ...") to stdout
        quiet = [logging.getLogger(name) for name in ("monai.bundle", "monai.bundle.workflows", "monai.bundle.scripts")]
        levels = [item.level for item in quiet]
        for item in quiet:
            item.setLevel(logging.ERROR)
        try:
            try:
                workflow = ConfigWorkflow(
                    config_file=str(root / "configs" / config), meta_file=str(root / "configs" / "metadata.json"),
                    logging_file=False, workflow_type=None, **overrides,
                )
            except yaml.YAMLError as exc:  # a hand-edited config
                raise AmecamError(f"{root / 'configs' / config}: cannot read ({one_line_reason(exc)})") from exc
            workflow.initialize()
            result = workflow.run()
            workflow.finalize()
        except RuntimeError as exc:  # MONAI wraps what the trainer raised in "Failed to evaluate ..."
            cause = _root_cause(exc)
            if isinstance(cause, (ValueError, FileNotFoundError)):
                raise AmecamError(str(cause)) from exc
            raise
        finally:
            for item, level in zip(quiet, levels):
                item.setLevel(level)
    return result


#: a log line of the bundle's logging.conf: "2026-12-05 16:11:35,521 - amecam.train - INFO - message"
_BUNDLE_LOG_LINE = re.compile(r"^\S+ \S+ - (amecam[\w.]*) - ([A-Z]+) - (.*)$")


#: ``torchrun`` (``python -m torch.distributed.run``) without its launcher's traceback when interrupted or when a
#: process fails: the processes' own report and amecam's last line (how to resume, what failed) say it, and the
#: launcher's 30 lines would bury them
_TORCHRUN = """import sys
try:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main
    try:
        main()
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError:
        sys.exit(1)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _cli_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def run_config_torchrun(root: Path, config: str, nproc_per_node: int, **overrides: Any) -> None:
    """Run ``root/configs/<config>`` with ``configs/multi_gpu_train.yaml`` in ``nproc_per_node`` processes.

    The command is ``torchrun --standalone --nproc_per_node N -m monai.bundle run ...``, the one a user
    of the bundle types. Its log lines come back through amecam's loggers (so they reach the run's
    ``logs/train.log``); its progress bars and errors go straight to the terminal.
    """
    root = root.resolve()  # the processes' paths must not depend on their working folder
    overrides = {key: str(Path(value).resolve()) if key in ("bundle_root", "dataset_dir") else value for key, value in overrides.items()}
    extra = root / "configs" / MULTI_GPU_CONFIG
    if not extra.is_file():
        raise AmecamError(f"{root}: this bundle's configs have no {MULTI_GPU_CONFIG} (made before 0.5.12): train it in one process")
    configs = [str(root / "configs" / config), str(extra)]
    args = ["--standalone", f"--nproc_per_node={nproc_per_node}", "-m", "monai.bundle", "run",
            "--config_file", str(configs), "--meta_file", str(root / "configs" / "metadata.json")]
    for key, value in overrides.items():
        args += [f"--{key}", _cli_value(value)]
    logger.info("running %s in %d processes: %s", config, nproc_per_node, shlex.join(["torchrun", *args]))
    cmd = [sys.executable, "-c", _TORCHRUN, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("PYTHONWARNINGS", "ignore:parsing config_file:UserWarning")  # MONAI's trust notice, once per process
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))  # the cores shared out (torchrun's banner otherwise)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace") as proc:
        for line in proc.stdout:
            match = _BUNDLE_LOG_LINE.match(line.rstrip("\n"))
            if match:
                logging.getLogger(match[1]).log(logging.getLevelNamesMapping().get(match[2], logging.INFO), match[3])
            else:
                logger.debug("%s", line.rstrip("\n"))
        status = proc.wait()
    if status:
        raise AmecamError(f"{config} in {nproc_per_node} torchrun processes failed (exit status {status}; the processes' own report is above)")


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
