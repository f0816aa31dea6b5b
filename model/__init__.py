"""The tiny model's side of the repository: training data (``model.data``), and later the training recipe,
shipped weights and evaluation. Nothing in ``avatar_backend`` imports this package at run time."""
