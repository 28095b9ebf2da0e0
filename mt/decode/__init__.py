"""Stage 3, decoding: loading runs for it (loading), the one search interface (search) with its per-step
rules (rules: n-gram blocking, repetition penalty, the loop guard, avoid lists) and terminology constraints
(constraints), lines to translations (translator), forced scores (scorer), ensembles, word alignments
(align), unseen words (unseen), int8 weights (quantize), attention plots (plot) and search traces (trace)."""
