"""Defaults the command line shows in its help, kept apart from the modules that use them so that ``--help``
imports nothing heavy."""

from __future__ import annotations

__all__ = ["DEFAULT_CLASSIFIER_LR", "DEFAULT_HVG", "END_TO_END_CLASSIFIER_LR", "WHOLE_TRANSCRIPTOME_GENES"]

#: ``hvg="auto"`` (the default): a reference of more than ``WHOLE_TRANSCRIPTOME_GENES`` genes (a whole
#: transcriptome) keeps its ``DEFAULT_HVG`` most variable genes; a smaller one, a gene set already chosen
#: (a panel, an earlier selection), keeps every gene. Chosen on development data, with and without labels
#: (``benchmarks/ABLATIONS_GENES.md``): selection helped the whole transcriptome of Kang and cost the
#: 3,000-gene hard world, whose cell types differ a little in every gene.
DEFAULT_HVG = 2000
WHOLE_TRANSCRIPTOME_GENES = 5000
#: Initial learning rate of classifier fine-tuning from the pre-trained teacher (``annotate train``); chosen on
#: the development tasks (``benchmarks/CLASSIFIER.md``). A classifier trained end to end (no pre-training) starts
#: at ``END_TO_END_CLASSIFIER_LR``, the rate of contrastive training.
DEFAULT_CLASSIFIER_LR = 3e-4
END_TO_END_CLASSIFIER_LR = 1e-3
