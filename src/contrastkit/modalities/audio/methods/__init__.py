"""Audio methods, one file each: SimCLR and BYOL on spectrogram views, CPC, wav2vec 2.0 and HuBERT on
the raw waveform, a masked autoencoder on log-mel patches.

Each module has ``build(options, sample_rate)``, registered in :data:`contrastkit.core.registry.
METHODS` by :mod:`contrastkit.modalities.audio.plugin`; ``options`` is the command's resolved
options (:data:`contrastkit.modalities.audio.cli.DEFAULTS`), turned into explicit arguments here.
"""
