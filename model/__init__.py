"""captioner's model: frozen CNN encoder -> image vector v -> LSTM decoder -> beam search.

Submodules are imported by name (model.captioner, model.train, ...): importing the package alone
loads no torch, so that `python -m model.synthetic --help` answers at once.
"""
