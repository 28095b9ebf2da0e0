"""Stage 1, the text: reading corpora (text), subword vocabularies (vocab), placeholders for spans that
pass through unchanged (placeholders), preparing memory-mapped corpora (prepare, dataset), token batches
(batching), known corpora (download) and the built-in pair (synthetic)."""
