"""setup.cfg installs every package of the source tree (a non-editable install has only those)."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    dirs = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, folder = (s.strip() for s in line.split("="))
        dirs[name] = ROOT / folder
    found = set()
    for name, folder in dirs.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((name, *rel)))
    missing = sorted(found - listed)
    assert not missing, f"packages missing from setup.cfg [options] packages: {missing}"
    assert listed <= found, sorted(listed - found)
