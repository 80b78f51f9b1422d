"""The ``amecam`` command line: thin wrappers over the library, one per command.

Each command turns its arguments into typed values, logs what it resolved and calls one library
function. User mistakes raise :class:`~amecam_cli.errors.AmecamError`; :func:`main` prints them as one
line and exits 2 (``--debug`` shows the traceback instead). ``-o`` is short for ``--output``.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from pathlib import Path

import fire
from fire.decorators import SetParseFns

from . import __version__
from .errors import AmecamError

__all__ = ["main"]

logger = logging.getLogger("amecam_cli")


def _path(value: object, name: str) -> Path:
    if value is None or value == "" or isinstance(value, bool):
        raise AmecamError(f"--{name} must be a path, got {value!r}")
    return Path(str(value)).expanduser()


def _int(value: object, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise AmecamError(f"--{name} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError as exc:
        raise AmecamError(f"--{name} must be a whole number, got {value!r}") from exc
    if minimum is not None and number < minimum:
        raise AmecamError(f"--{name} must be >= {minimum}, got {number}")
    return number


def _float(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise AmecamError(f"--{name} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise AmecamError(f"--{name} must be a number, got {value!r}") from exc


@SetParseFns(output=str)
def synth(output: str, n_cases: int = 8, seed: int = 0, overwrite: bool = False) -> None:
    """Write a synthetic BraTS-2021-layout cohort: brain phantoms with tumours, not patient data.

    Example: amecam synth cohort/ --n_cases 8 --seed 0

    Args:
        output: folder to write the cohort into (created if missing).
        n_cases: number of cases (240x240x155, flair/t1/t1ce/t2 + seg).
        seed: random seed; the same seed always gives the same cohort.
        overwrite: replace a cohort made with another seed.
    """
    from .synth import synthesize_cohort

    out = _path(output, "output")
    n = _int(n_cases, "n_cases", minimum=1)
    s = _int(seed, "seed", minimum=0)
    logger.info("synth: %d case(s), seed %d -> %s", n, s, out)
    folders = synthesize_cohort(out, n_cases=n, seed=s, overwrite=bool(overwrite))
    logger.info("wrote %d case(s) to %s", len(folders), out)


@SetParseFns(data_dir=str, output=str, modality=str, pattern=str, slice_labels=str, ambiguous=str)
def slice(  # noqa: A001 - the command is called "slice"
    data_dir: str,
    output: str | None = None,
    modality: str = "flair",
    image_size: int = 128,
    min_tumor_fraction: float = 0.01,
    ambiguous: str = "exclude",
    val_fraction: float = 0.2,
    seed: int = 0,
    pattern: str | None = None,
    slice_labels: str | None = None,
    overwrite: bool = False,
) -> None:
    """Turn volumes into a 2-D training set with slice labels and a case-level train/val split.

    Example: amecam slice BraTS2021/ -o slices/ --modality flair,t1ce

    Args:
        data_dir: dataset folder (BraTS 2021/2023 layout or the root for --pattern) or a datalist .json.
        output: output folder (-o); rerunning with the same settings resumes.
        modality: one modality or several, comma-separated (flair, t1, t1ce, t2), stacked as channels.
        image_size: side of the square slices, after cropping to the brain.
        min_tumor_fraction: a slice is "tumor" when the tumour covers more than this share of it.
        ambiguous: slices with less tumour: exclude (kept as "ambiguous"), normal (official code), tumor.
        val_fraction: share of cases held out for validation (split by case, never by slice).
        seed: seed of the split.
        pattern: naming pattern, e.g. "{case}/{case}_{modality}.nii.gz" or "flair={case}/F.nii.gz;label={case}/L.nii.gz".
        slice_labels: CSV with columns case,slice,label instead of segmentations.
        overwrite: replace a slice dataset with other settings in the output folder.
    """
    from .cases import describe, find_cases, parse_modalities
    from .slicing import SliceSettings, read_slice_labels, slice_dataset

    if output is None:
        raise AmecamError("slice needs an output folder: -o OUT_DIR")
    settings = SliceSettings(
        modalities=parse_modalities(modality),
        image_size=_int(image_size, "image_size"),
        min_tumor_fraction=_float(min_tumor_fraction, "min_tumor_fraction"),
        ambiguous=str(ambiguous),
        val_fraction=_float(val_fraction, "val_fraction"),
        seed=_int(seed, "seed"),
    )
    labels = read_slice_labels(_path(slice_labels, "slice_labels")) if slice_labels else None
    cases = find_cases(_path(data_dir, "data_dir"), settings.modalities, pattern=pattern, require_label=labels is None)
    logger.info("slice: %s from %s -> %s, settings %s", describe(cases), data_dir, output, settings.as_dict())
    counts = slice_dataset(cases, _path(output, "output"), settings, slice_labels=labels, overwrite=bool(overwrite))
    logger.info(
        "%d slices of %d cases (%d reused): %s; split %s",
        counts["slices"], counts["cases"], counts["reused_cases"], counts["labels"], counts["split"],
    )


@SetParseFns(output=str)
def demo(output: str = "demo_output", n_cases: int = 8, seed: int = 0) -> None:
    """Run the main job end to end on a synthetic cohort (no download needed).

    Example: amecam demo -o demo_output

    Args:
        output: folder for the cohort, slices, bundle, masks and figure (reused when rerun).
        n_cases: number of synthetic cases.
        seed: seed of the cohort and the split.
    """
    from .demo import run_demo

    out = _path(output, "output")
    logger.info("demo: %s, %d cases, seed %s", out, _int(n_cases, "n_cases"), seed)
    run_demo(out, n_cases=_int(n_cases, "n_cases"), seed=_int(seed, "seed", minimum=0))


def _commands() -> dict:
    """The command table (explicit, so ``amecam --help`` lists exactly these)."""
    return {
        "synth": synth,
        "slice": slice,
        "demo": demo,
    }


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("amecam: %(message)s" if not debug else "%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("matplotlib", "PIL", "monai", "fire"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="monai")


def _translate_short_flags(argv: list[str]) -> list[str]:
    out = []
    for token in argv:
        if token == "-o":
            out.append("--output")
        elif token.startswith("-o="):
            out.append("--output=" + token[3:])
        else:
            out.append(token)
    return out


def _check_arguments(commands: dict, argv: list[str]) -> None:
    """Reject unknown flags and surplus positional arguments before anything runs.

    Fire would otherwise call the command with what it understood and only complain about the rest
    afterwards, when the work is done.
    """
    if not argv or argv[0].startswith("-") or argv[0] not in commands:
        return
    params = inspect.signature(commands[argv[0]]).parameters
    names = list(params)
    positional = 0
    tokens = argv[1:]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in ("--help", "-h", "--"):
            return
        if token.startswith("-") and not _is_number(token):
            key = token.lstrip("-").split("=", 1)[0].replace("-", "_")
            boolean = key.startswith("no") and key[2:] in params and params[key[2:]].default is False
            if key not in params and not boolean:
                valid = ", ".join(f"--{n}" for n in names)
                raise AmecamError(f"amecam {argv[0]} has no option {token.split('=', 1)[0]} (valid: {valid})")
            if "=" not in token and index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
                index += 1  # the flag's value
        else:
            positional += 1
        index += 1
    if positional > len(names):
        raise AmecamError(f"amecam {argv[0]} takes at most {len(names)} arguments, got {positional}")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``amecam`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv in (["--version"], ["version"]):
        print(f"amecam {__version__}")
        return 0
    _configure_logging(debug)
    argv = _translate_short_flags(argv)
    commands = _commands()
    try:
        _check_arguments(commands, argv)
        fire.Fire(commands, command=argv, name="amecam")
    except AmecamError as exc:
        if debug:
            raise
        print(f"amecam: error: {exc}", file=sys.stderr)
        return 2
    except fire.core.FireExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("amecam: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
