"""Text: a pretrained Transformer encoder read from a local folder, text sources (lines, JSONL,
STS pairs, BEIR folders), token-level views, the sentence-embedding methods (SimCSE, Contriever,
DebCSE, WhitenedCSE, CCP) and their evaluation (STS Spearman, BEIR retrieval metrics)."""
