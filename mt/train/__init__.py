"""Stage 2, training: the Trainer and what it is made of."""
