"""Network parts that methods of several modalities compose: projection heads, predictors,
momentum (EMA) targets, queues of past keys, gathering across processes, global BatchNorm,
GradCache and a compact patch transformer."""
