"""Time series: UCR/UEA files, TS2Vec's crop views, the dilated convolutional encoder, TS2Vec."""
