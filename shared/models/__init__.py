"""Model definitions shared by the hub (training, compression) and agents (fine-tuning).

torch is imported only inside this package, and only training/compression paths import it,
so ``pip install fedfleet[agent]`` stays torch-free.
"""

from shared.models.registry import MODEL_SPECS, ModelSpec, build_model, get_spec

__all__ = ["MODEL_SPECS", "ModelSpec", "build_model", "get_spec"]
