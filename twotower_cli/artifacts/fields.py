"""The types every reader of a `manifest.json` relies on (store.read_manifest checks them): a
hand-edited or foreign file is one line naming the field, not a TypeError deep in a stage; an
output name that leads out of its stage dir (`../x`, `/etc/passwd`) is refused before a read."""

from __future__ import annotations

from pathlib import Path

FIELDS = {"stage": str, "id": str, "upstream": dict, "outputs": dict, "config": dict,
          "figures": dict, "sources": list, "inputs": list}  # fmt: skip


def badly_typed(manifest: dict) -> str | None:
    """What is wrong with a manifest's field types or output names, or None."""
    for key, kind in FIELDS.items():
        if key in manifest and not isinstance(manifest[key], kind):
            return f"{key} is a {type(manifest[key]).__name__}, not a {kind.__name__}"
    if not all(isinstance(v, str) for v in manifest.get("upstream", {}).values()):
        return "upstream maps a stage to something other than an id"
    if not all(isinstance(p, str) for p in manifest.get("inputs", [])):
        return "inputs lists something other than a path"
    for name, want in manifest.get("outputs", {}).items():
        if name != Path(name).name or name in ("", ".", "..") or name.startswith("."):
            return f"output {name!r} is not a file of the stage dir"
        if not (isinstance(want, dict) and isinstance(want.get("sha256"), str)
                and type(want.get("bytes")) is int):  # fmt: skip
            return f"output {name!r} lacks a sha256 string and a bytes integer"
    return None
