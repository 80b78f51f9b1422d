"""The installed package carries the bundle template, so amecam works without the source tree."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_bundle_template_and_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "Could not find a version" in proc.stderr:
        pytest.skip("no package index reachable to build the wheel's build dependencies")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("amecam-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    template = {p.relative_to(REPO / "bundle").as_posix() for p in (REPO / "bundle").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    missing = sorted(name for name in template if f"amecam_bundle/{name}" not in names)
    assert not missing, missing
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "amecam = amecam_cli.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_version_has_one_source():
    from amecam_cli import __version__

    assert "version = attr: amecam_cli.__version__" in (REPO / "setup.cfg").read_text(encoding="utf-8")
    assert __version__.count(".") == 2


def _requirements(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_constraints_pin_every_requirement_inside_its_range():
    """`make install` installs with constraints.txt: each dependency setup.cfg names (test extra included) must be
    pinned there, once, to a version its setup.cfg range accepts, or a fresh clone would install an untested set."""
    import configparser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    wanted = [Requirement(r) for r in _requirements(cfg["options"]["install_requires"])]
    wanted += [Requirement(r) for r in _requirements(cfg["options.extras_require"]["test"])]
    pins: dict[str, str] = {}
    for line in _requirements((REPO / "constraints.txt").read_text(encoding="utf-8")):
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = version
    for req in wanted:
        key = canonicalize_name(req.name)
        assert key in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[key]), f"constraints.txt pins {req.name}=={pins[key]}, outside {req}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    torch_pin = next(line.split(":=")[1].strip() for line in makefile.splitlines() if line.startswith("TORCH_PIN"))
    assert torch_pin == f"torch=={pins['torch']}", "the Makefile's torch pin and constraints.txt disagree"
    installs = [line for line in makefile.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), "a Makefile pip install ignores the pins"
    assert "CONSTRAINTS := constraints.txt" in makefile

    template = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    tested = {"monai": template["monai_version"], "torch": template["pytorch_version"],
              "numpy": template["numpy_version"], **template["required_packages_version"]}
    for name, version in tested.items():  # a trained bundle records its own; the template states the tested set
        assert pins[canonicalize_name(name)] == version, f"bundle metadata says {name} {version}, constraints.txt pins {pins[canonicalize_name(name)]}"
