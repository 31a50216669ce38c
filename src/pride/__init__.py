"""pride: align Hugging Face causal LMs (SFT -> DPO family -> online DPO / SPPO -> eval)."""

__version__ = "0.1.0"

from pride.errors import PrideError

__all__ = ["PrideError", "__version__"]
