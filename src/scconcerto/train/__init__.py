"""Training plans, settings and the runner (Lightning)."""

from .config import TrainConfig
from .plan import ContrastivePlan, training_loader
from .runner import adapt_batch_norm, embed_cells, fit, is_global_zero, iter_embeddings, resolve_device

__all__ = ["ContrastivePlan", "TrainConfig", "adapt_batch_norm", "embed_cells", "fit", "is_global_zero",
           "iter_embeddings", "resolve_device", "training_loader"]
