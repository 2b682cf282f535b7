"""Every plugin registry Vesper has, by kind (imports the libraries that fill them)."""

from __future__ import annotations

from vesper_core.registry import Registry


def all_registries() -> dict[str, Registry]:
    from vesper_core.layers.era import ERA_BACKENDS
    from vesper_core.presets import PRESETS
    from vesper_data.sources import FORMATS
    from vesper_data.tokenizers import TOKENIZERS
    from vesper_optim.functional import BACKENDS
    from vesper_optim.registry import OPTIMIZERS

    return {"preset": PRESETS, "optimizer": OPTIMIZERS, "tokenizer": TOKENIZERS, "format": FORMATS,
            "kernel": BACKENDS, "era_backend": ERA_BACKENDS}
