"""Training of edged's own emotion models (PyTorch: the ``train`` extra, never the daemon).

The daemon only loads the exported ONNX graph and its JSON sidecar. What the graph expects
(labels, crop, gray conversion, resize, normalisation) is taken here from the package
itself (``edged.models.catalog``, ``edged.models.classification.fer``), so training and
the daemon cannot drift apart.

- :mod:`edged_train.config`: the one frozen :class:`~edged_train.config.TrainConfig`
- :mod:`edged_train.data`: datasets, FER+ soft targets, augmentation, class balance
- :mod:`edged_train.model`: the network
- :mod:`edged_train.loop`: LR schedule, wall-clock budget, the epoch loop, checkpoints
- :mod:`edged_train.export`: test-time views, ONNX export and its check
- :mod:`edged_train.sidecar`: the model's JSON sidecar
- :mod:`edged_train.cli`: ``python -m edged_train`` (also ``tools/train_emotion.py``)
"""
