"""Stage 3, decoding: the one search interface (search), lines to translations (translator), forced scores
(scorer), ensembles, word alignments (align), unseen characters (unseen), int8 weights (quantize), plots."""
