"""Raw text to batches, without JAX: corpus reading (`corpus`, `input_files`), the normaliser and
tokenizer (`normalization`, `tokenizer`, `tokenizer_training`), pretraining examples (`instances`:
NSP/SOP pairs, `masking`: whole-word masking, `records`: TFRecord features, `pretraining_data`: the
parallel prepare-data driver), labelled text for fine-tuning (`finetune_data`) and the tf.data input
pipeline (`input_pipeline`)."""

from bert_jax import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, __path__)
