"""One package per kind of data, each with the same inside: ``sources`` (files on disk -> data),
``views`` (random and evaluation transforms), ``encoders``, ``methods`` and ``cli`` (its options).
Methods of every modality register in :data:`contrastkit.core.catalogue.METHOD_CATALOGUE`."""
