"""Which artifact version this server start serves (the contract itself lives in contract/)."""
from __future__ import annotations

import os

from contract.card import ArtifactError
from contract.publish import resolve


def pin_version(settings):
    """Resolve LATEST once per server start, for every process of it: the resolved version directory becomes
    SERVING_MODEL_DIR, which `bentoml serve` hands to each API worker it spawns (and respawns). Otherwise each worker
    would read LATEST when it starts, and a publish in between (or a worker restart after one) would have one pod
    answer from two versions."""
    if settings.model_dir is not None or settings.artifacts_root is None or not settings.model_name:
        return settings
    try:
        version_dir = resolve(None, settings.artifacts_root, settings.model_name)
    except (ArtifactError, OSError):
        return settings  # nothing published yet: the services stay unready and say why
    os.environ["SERVING_MODEL_DIR"] = str(version_dir)
    return settings.model_copy(update={"model_dir": version_dir})
