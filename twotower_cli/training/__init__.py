"""Training (`twotower train`, tune's trials): the loop, its losses and optimisers, data
parallelism, and the per-example tensors the loop reads.

    examples.py     task labels and user histories attached to the sampler's examples
    losses.py       the losses (the loss decides the negatives: logQ, temperature, masks)
    logq.py         the exact logQ in numpy (torch-free: the samplers read it at sample time)
    optim.py        optimisers, LazyAdam for sparse rows
    trainer.py      the loop: batches, early stopping on validation recall, best weights
    distributed.py  DistributedDataParallel over torch.distributed (train.nproc, torchrun)
    negatives.py    a rank's in-batch negatives: the global batch's or its own (dist_negatives)
    sparse_sync.py  sparse gradients averaged over gloo in one collective
    fitting.py      one configuration trained in memory (train's and tune's entry point)
"""
