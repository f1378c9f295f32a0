"""Progress bars of the long commands (tqdm), apart from the logging module so that the
tokenizer and data commands show one without importing TensorFlow."""

from __future__ import annotations

DELAY_S = 1.0  # a bar appears only after this long: quick commands and early errors print no bar


def progress_bar(total: int, unit: str, enabled: bool = True, initial: int = 0, desc: str | None = None,
                 leave: bool = True):
    """The tqdm bar of a long command. Callers advance it by FINISHED steps (once a step's outputs
    have come back from the device), so its rate is what the device does, not the dispatch rate."""
    import tqdm

    return tqdm.tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, leave=leave,
                     mininterval=2.0, delay=DELAY_S, dynamic_ncols=True)
