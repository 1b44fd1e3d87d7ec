"""Checks that an index's files and the model or checkpoints a user names are the indexed ones."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TracInInputError
from ..outputs.digest import checkpoint_digest, file_digest

__all__ = ["verify_checkpoints", "verify_file", "verify_files"]


def verify_file(path: Path, expected: str) -> None:
    """Refuse a missing file, or one whose sha256 is not the manifest's."""
    if not path.is_file():
        raise TracInInputError(f"{path} is missing: the index is incomplete; rebuild it")
    if file_digest(path) != expected:
        raise TracInInputError(
            f"{path} does not match the index manifest (sha256 differs): the index files were changed or "
            "mixed with another build; rebuild the index"
        )


def verify_checkpoints(
    folder: Path, manifest: Mapping[str, Any], checkpoints: Any, learning_rates: Sequence[float] | None
) -> None:
    from ..inputs.manifest import resolve_checkpoints

    resolved = resolve_checkpoints(
        checkpoints if isinstance(checkpoints, (str, Path)) else list(checkpoints),
        learning_rates=None if learning_rates is None else list(learning_rates),
    )
    given = [[c.learning_rate, checkpoint_digest(c.source)] for c in resolved]
    indexed = [[c["learning_rate"], c["content_sha256"]] for c in manifest["checkpoints"]]
    if given != indexed:
        raise TracInInputError(
            f"the given checkpoints are not the ones the index in {folder} was built from (contents or "
            "learning rates differ by sha256): rebuild the index for them"
        )


def verify_files(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse an index whose files (model, checkpoints, second moments, sketch) or shards changed.

    Raises:
        TracInInputError: naming the first file that is missing or changed since the build.
    """
    verify_file(folder / manifest["model_file"], manifest["model_sha256"])
    for checkpoint in manifest["checkpoints"]:
        verify_file(folder / checkpoint["file"], checkpoint["sha256"])
        if checkpoint.get("exp_avg_sq"):  # the optimizer's second moment, for the adam variant
            verify_file(folder / checkpoint["exp_avg_sq"]["file"], checkpoint["exp_avg_sq"]["sha256"])
    if manifest.get("sketch"):
        directions = manifest["sketch"]["directions"]
        verify_file(folder / directions["file"], directions["sha256"])
    for shard in manifest["shards"]:
        meta = json.loads((folder / shard["directory"] / "meta.json").read_text())
        if meta["fingerprint"] != manifest["fingerprint"]:
            raise TracInInputError(
                f"{folder / shard['directory']}: a shard of another build; rebuild the index"
            )
