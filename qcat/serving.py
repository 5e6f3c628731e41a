"""What a process serves when it starts: the adapter it was given, else its registry's current version. Torch-free,
shared by the worker and `qcat classify`."""

from __future__ import annotations

from pathlib import Path

from qcat.errors import RegistryError
from qcat.registry import Registry
from qcat.settings import EngineSettings


def adapter_to_serve(settings: EngineSettings) -> Path | None:
    """What a worker or `qcat classify` serves: QCAT_ADAPTER if set; else, with QCAT_REGISTRY, its current version. A
    registry that is not there, or has nothing promoted, is an error unless QCAT_ZERO_SHOT asks for the base model: a
    misspelt path or an unmounted volume must not quietly serve zero-shot answers."""
    if settings.adapter is not None or settings.registry is None:
        return settings.adapter
    registry = Registry(settings.registry)
    current = registry.current_path() if registry.exists() else None
    if current is None and not settings.zero_shot:
        why = "has no promoted version yet" if registry.exists() else "does not exist (misspelt, or not mounted?)"
        raise RegistryError(
            f"the registry {settings.registry} {why}: promote an adapter there (`qcat adapters promote VERSION "
            "--registry ...`), point QCAT_REGISTRY at the right place, or set QCAT_ZERO_SHOT=true to serve the base "
            "model zero-shot"
        )
    return current
