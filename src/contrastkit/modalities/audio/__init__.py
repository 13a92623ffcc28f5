"""Audio: folders of recordings decoded once (sources), a log-mel and a raw-waveform front end,
batched views on the training device, frame encoders, and SimCLR, BYOL, CPC, wav2vec 2.0, HuBERT and a
spectrogram MAE on the engine."""
