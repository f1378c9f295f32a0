"""Training on a device mesh: the loops (`train`: pretraining, `finetune`: classification), the jitted
steps (`train_step`), `optim`, `sharding`, orbax `checkpoint`s, `preemption`,
`distributed` start-up and the checks that a resumed run matches
its data and config (`run_checks`)."""

from bert_jax import lazy_submodules

__getattr__, __dir__ = lazy_submodules(__name__, __path__)
