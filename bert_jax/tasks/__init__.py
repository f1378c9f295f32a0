"""What is trained, on top of the one trainer (`bert_jax.training.trainer`): `pretraining` (MLM +
NSP/SOP on prepare-data shards; `bert-jax pretrain` and `evaluate`) and `classification`
(sequence classification on labelled text; `bert-jax finetune` and `predict`, `Classifier`). Each
task gives the trainer its model initialisation, loss and metric sums, eval sums and summaries
(`bert_jax.training.train_step.Task`)."""

from bert_jax import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, __path__)
