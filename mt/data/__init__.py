"""Stage 1, the text: reading corpora (text), subword vocabularies (vocab), preparing memory-mapped corpora
(prepare, dataset), token batches (batching), known corpora (download) and the built-in pair (synthetic)."""
