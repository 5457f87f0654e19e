"""Every Python package folder is listed in pyproject.toml (a non-editable install would miss it)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _folder(package: str, mapping: dict[str, str]) -> Path:
    """Folder of a package under setuptools' package-dir mapping (longest mapped prefix wins)."""
    prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
    rest = package[len(prefix):].lstrip(".")
    return ROOT / mapping[prefix] / rest.replace(".", "/")


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping, listed = config["package-dir"], set(config["packages"])
    data_only = set(config.get("package-data", {}))  # folders of data files (no __init__.py), e.g. checkpoints
    for package in listed:
        folder = _folder(package, mapping)
        if package in data_only:
            assert folder.is_dir() and any(folder.iterdir()), package
        else:
            assert (folder / "__init__.py").is_file(), package
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            name = ".".join([package, *init.parent.relative_to(ROOT / folder).parts])
            if _folder(name, mapping) == init.parent:  # not shadowed by a more specific mapping
                found.add(name)
    assert not (found - listed), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
