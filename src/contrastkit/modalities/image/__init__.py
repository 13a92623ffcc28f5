"""Images: folders, IDX and ``.npz`` files, streamed shards; batched views on the training device;
CNN / ResNet / timm encoders; SimCLR, MoCo, BYOL, SimSiam, DirectPred, JEPA and the objective
catalogue's methods."""
