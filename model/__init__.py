"""The tiny model's side of the repository: training data (``model.data``), the training recipe
(``model.train``), the evaluation (``model.evaluate``) and the shipped weights (``model/weights``). Nothing in
``avatar_backend`` imports this package at run time; the server only reads the weights file."""
