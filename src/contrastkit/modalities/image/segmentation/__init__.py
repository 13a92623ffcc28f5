"""Segmentation with few labels: image + mask data, paired views, a U-Net-style decoder over a
contrastkit encoder's stage features, Dice and IoU, and fine-tuning from a pretrained run.

``data.py`` (folders of images and masks paired by file name; Kvasir-SEG; the development carve and
label budgets), ``views.py`` (crops, flips and scales that move image and mask together; where a
position of one view is in another), ``model.py`` (the decoder and the segmentation model),
``metrics.py`` (Dice, IoU), ``finetune.py`` (training the decoder and encoder on a label budget and
scoring it), ``command.py`` (``contrastkit segment``, light: no torch at import).

The dense pretraining methods that feed it are ``gcl-global`` and ``gcl-local``
(:mod:`contrastkit.modalities.image.methods.gcl_global`, :mod:`~contrastkit.modalities.image.methods.gcl_local`).
Nothing is imported here, so the methods and this package can import each other's modules freely.
"""
