"""Stage 2, training: the Trainer and what it is made of.

    world.py       World: rank, size, device of this process; the collective calls (DDP)
    data.py        the prepared corpus, the run's vocabularies, token batches, the validation set
    optim.py       label-smoothed loss, optimizer, schedules, Optimization; TrainStep, one update
    validation.py  validation loss, BLEU / chrF with the real search
    records.py     the run directory: config, meta.json, metrics.jsonl, best weights, checkpoints, resume
    log.py         the progress bar / log lines and TensorBoard
    trainer.py     Trainer: the loop and its decisions (validate, keep the best, checkpoint, stop)
"""
