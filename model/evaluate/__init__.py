"""Evaluating the tiny model on characters and voices it never saw (``python -m model.evaluate``).

Every number comes from the pipeline that serves (:class:`~avatar_backend.generator.pipeline.LiveActPipeline`,
streaming decoder included) fed block by block as the worker feeds it, and is measured on the frames it makes
with the measures that validate the training data (:mod:`model.data.measure`).
"""
