"""Training plans, settings and the runner (Lightning)."""

from .config import TrainConfig
from .plan import ContrastivePlan, training_loader
from .runner import (adapt_batch_norm, embed_cells, embed_hidden, fit, is_global_zero, iter_embeddings,
                     resolve_device, teacher_hidden_states, with_new_domains)

__all__ = ["ContrastivePlan", "TrainConfig", "adapt_batch_norm", "embed_cells", "embed_hidden", "fit",
           "is_global_zero", "iter_embeddings", "resolve_device", "teacher_hidden_states", "training_loader",
           "with_new_domains"]
