"""Data-parallel RetinaNet training on the torch backend with ``DistributedDataParallel``.

The pattern of Keras' guide "Multi-GPU distributed training with PyTorch"
(keras.io/guides/distributed_training_with_torch): a Keras model on the torch backend *is* a
``torch.nn.Module``, so ``torch.nn.parallel.DistributedDataParallel`` wraps it directly and a
plain torch loop trains it. Launch one process per device with torchrun::

    torchrun --nproc-per-node 2 train.py          # gloo on CPU, nccl on GPU

    # train.py
    from keras_retinanet import RetinaNet
    from keras_retinanet.distribute._torch import DDPTrainer, init_from_torchrun
    rank, world_size, local_rank = init_from_torchrun()   # before building the model
    model = RetinaNet(3, ...)
    model.build((None, 512, 512, 3))
    trainer = DDPTrainer(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    losses = trainer.fit(images, y, epochs=10, global_batch_size=16)
    if rank == 0:
        model.save("trained.keras")

Gradients and the global batch. Every optimizer step reads one *global* batch (the same
``global_batch_size`` examples, in the same order, on every rank); rank ``r`` computes the
loss on its contiguous shard of it and DDP averages the gradients over the ranks.
``RetinaNetLoss`` normalises each image by its own positive-anchor count and then takes the
mean over the images, so an image's loss does not depend on the other images of its batch:
the mean over ranks of the per-shard means is the mean over the global batch, as long as the
shards are equally large. For a shard of another size (a short last batch), the local loss is
scaled by ``shard_size * world_size / global_size``, which keeps the average exact. Training
is then the same as single-process training on the global batch (up to float summation
order), which ``tests/test_distribute_torch.py`` checks.

Batch normalization. Keras ``BatchNormalization`` layers are not ``torch.nn`` batch-norm
modules, so ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` finds nothing to convert: in
training mode each replica normalises with the statistics of its own shard (per-replica
batch norm, as in the Keras guide), so results differ from single-process training on the
global batch. Their moving mean and variance are non-trainable Keras variables (torch
parameters with ``requires_grad=False``, not buffers): DDP copies them from rank 0 once, when
it wraps the model, and never again, so each rank's moving statistics then follow its own
shards. Save from rank 0 (or freeze batch norm, as detection fine-tuning usually does).

All torch imports stay in this module.
"""

import os

import keras
import numpy as np
import torch
import torch.distributed as dist
from keras import ops

from keras_retinanet.losses import RetinaNetLoss

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_from_torchrun(backend=None, timeout=None):
    """Joins the process group that torchrun set up; returns ``(rank, world_size, local_rank)``.

    Call it before building the model: on GPU it selects device ``cuda:local_rank``, where the
    Keras torch backend then creates the model's variables.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; ``None`` picks nccl when CUDA is available, else gloo.
        timeout: optional ``datetime.timedelta`` for the process group's collectives.

    Raises:
        ValueError: when torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
            ``MASTER_ADDR``, ``MASTER_PORT``) is missing or not integers where it must be.
    """
    missing = [name for name in _TORCHRUN_VARS if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"torchrun environment variables missing: {', '.join(missing)}. Launch with "
            "torchrun --nproc-per-node N your_script.py (or python -m torch.distributed.run "
            "--nproc-per-node N your_script.py)"
        )
    try:
        rank, world_size, local_rank = (
            int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        )
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from None
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE), got {rank} and {world_size}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend, rank=rank, world_size=world_size, **kwargs)
    return rank, world_size, local_rank


def available_devices(device_type=None):
    """Devices one torchrun process each can train on: ``["cuda:0", ...]`` for ``"gpu"`` (or
    ``None`` when CUDA is available), ``["cpu"]`` for ``"cpu"`` (or ``None`` without CUDA: CPU
    processes share the host's cores, so any number of them can run, but it is one device).

    Raises:
        ValueError: for another ``device_type``, or ``"gpu"`` without CUDA.
    """
    if device_type not in (None, "cpu", "gpu"):
        raise ValueError(f"device_type must be None, 'cpu' or 'gpu' on torch, got {device_type!r}")
    cuda = torch.cuda.is_available()
    if device_type == "gpu" and not cuda:
        raise ValueError("device_type='gpu' but PyTorch sees no CUDA device")
    if device_type == "cpu" or not cuda:
        return ["cpu"]
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def shutdown(*, wait_for_peers=True):
    """Leaves the process group (``destroy_process_group``) if one was joined.

    Args:
        wait_for_peers: first wait at a barrier until every rank has arrived, so that no rank
            closes its connections while a peer is still reading from them (gloo aborts that
            peer, SIGABRT, with "Connection closed by peer"). Pass ``False`` when leaving
            because of an error: the other ranks may never reach the barrier.
    """
    if not dist.is_initialized():
        return
    if wait_for_peers:
        dist.barrier()
    dist.destroy_process_group()


def shard_bounds(global_size, rank, world_size):
    """``(start, stop)`` of rank ``rank``'s contiguous shard of a batch of ``global_size``.

    Shards differ in size by at most one (``np.array_split``); the concatenation of the shards
    in rank order is the batch itself.
    """
    base, extra = divmod(int(global_size), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _take(tree, start, stop):
    if isinstance(tree, dict):
        return {key: _take(value, start, stop) for key, value in tree.items()}
    return tree[start:stop]


class DDPTrainer:
    """Trains a built ``RetinaNet`` on the torch backend under ``DistributedDataParallel``.

    Args:
        model: a built ``RetinaNet`` (torch backend). Build it after ``init_from_torchrun``.
        optimizer: a ``torch.optim.Optimizer`` over ``model.parameters()``, or a callable
            ``params -> optimizer``; default ``torch.optim.SGD(params, lr=0.01)``.
        loss: the loss, default ``RetinaNetLoss(model.num_classes)`` (what ``compile()``
            defaults to); it must return the mean over the batch of per-image losses for
            the gradient average to equal single-process training.
        find_unused_parameters: passed to DDP (needed when some trainable weight takes no
            part in the forward pass, e.g. an unused backbone output).

    Without a process group (not launched by torchrun) the model is trained as it is, in one
    process, with the same loop: the reference the distributed run must agree with.

    ``optimizer`` may also be a Keras optimizer (``"keras"``: the one the model was compiled
    with). It then updates the variables from the DDP-averaged gradients exactly as Keras'
    own torch train step does (``optimizer.apply(grads, trainable_variables)``), so learning
    rate schedules, weight decay and the optimizer state saved in ``.keras`` files are Keras'
    (a run resumed from such a file continues with its momentum). :meth:`fit_epochs` is the
    ``model.fit``-like loop with Keras callbacks that ``train --devices N`` uses.
    """

    def __init__(self, model, optimizer=None, loss=None, *, find_unused_parameters=False):
        if not model.built:
            raise ValueError("build the model (model.build(input_shape)) before DDPTrainer")
        self.model = model
        self.loss = loss if loss is not None else RetinaNetLoss(model.num_classes)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        # Touching named_parameters makes Keras register its variables as torch parameters.
        params = [p for _, p in model.named_parameters()]
        if self.distributed:
            device_ids = None
            if dist.get_backend() == "nccl":
                device_ids = [torch.cuda.current_device()]
            # DDP broadcasts rank 0's parameters here, so all ranks start from the same weights.
            self.module = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
            )
        else:
            self.module = model
        trainable = [p for p in params if p.requires_grad]
        if optimizer == "keras":
            optimizer = model.optimizer
            if optimizer is None:
                raise ValueError('optimizer="keras" needs a compiled model')
        if isinstance(optimizer, keras.optimizers.Optimizer):
            self.optimizer = optimizer
            self._keras_optimizer = True
            return
        self._keras_optimizer = False
        if optimizer is None:
            optimizer = torch.optim.SGD(trainable, lr=0.01)
        elif not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer(trainable)
        self.optimizer = optimizer

    def train_step(self, images, y):
        """One step on this rank's shard; ``y`` is ``{"boxes", "classes"}`` or encoded targets.

        Returns the local loss (a float) before the update. Every rank must call it the same
        number of times (each call all-reduces the gradients).
        """
        return self._step(images, y, scale=1.0)

    def _step(self, images, y, scale):
        images = ops.convert_to_tensor(images, "float32")
        targets = self.model.encode_targets(images, y) if isinstance(y, dict) else y
        targets = ops.convert_to_tensor(targets, "float32")
        self.model.zero_grad(set_to_none=True)
        y_pred = self.module(images, training=True)
        loss = self.loss(targets, y_pred)
        (loss * scale).backward()
        if self._keras_optimizer:
            variables = self.model.trainable_variables
            grads = [v.value.grad for v in variables]
            with torch.no_grad():
                self.optimizer.apply(grads, variables)
        else:
            self.optimizer.step()
        return float(loss.detach().cpu())

    def fit(self, x, y=None, *, epochs=1, global_batch_size=None, shuffle=False, seed=0):
        """Trains for ``epochs``; returns the mean over ranks of each step's loss (a list).

        Args:
            x: images ``[N, H, W, 3]`` (with ``y``), or a sequence of global batches
                ``(images, y)`` (a ``DetectionDataset``, ``keras.utils.PyDataset``, list):
                every rank reads the same global batch and keeps its shard.
            y: ``{"boxes": [N, M, 4], "classes": [N, M]}`` (``-1`` padding) or encoded
                ``[N, A, 5]`` targets, when ``x`` is an array.
            epochs: passes over the data.
            global_batch_size: examples per optimizer step over all ranks (arrays only):
                per-rank batch times world size. A last global batch smaller than the world
                size is dropped (a rank without examples cannot join the step).
            shuffle: reshuffle array examples each epoch, identically on every rank
                (``seed + epoch``).
            seed: the shuffling seed.
        """
        losses = []
        for epoch in range(int(epochs)):
            for images, targets in self._global_batches(
                x, y, global_batch_size, shuffle, seed, epoch
            ):
                size = len(images)
                if size < self.world_size:
                    continue
                start, stop = shard_bounds(size, self.rank, self.world_size)
                scale = (stop - start) * self.world_size / size
                loss = self._step(images[start:stop], _take(targets, start, stop), scale)
                losses.append(self._mean_over_ranks(loss * scale))
        return losses

    def fit_epochs(self, batches, *, epochs, initial_epoch=0, callbacks=(), verbose=1):
        """``model.fit(batches, epochs=..., initial_epoch=..., callbacks=...)`` under DDP.

        Args:
            batches: a sequence of global batches ``(images, {"boxes", "classes"})`` that
                every rank reads identically (a ``DetectionDataset`` with the same seed);
                ``on_epoch_end()`` is called after each epoch, as Keras does, so it reshuffles.
            epochs, initial_epoch: as ``fit``'s.
            callbacks: Keras callbacks; they get ``on_train_batch_end`` logs ``{"loss"}`` (the
                mean over ranks of the step's loss, the same on every rank) and
                ``on_epoch_end`` logs ``{"loss"}`` (the epoch's mean). ``model.stop_training``
                set by a callback ends training after the current batch on every rank (the
                logged loss is identical on all ranks, so loss-based stops agree).
            verbose: ``1`` a Keras progress bar, ``0`` none.

        Returns:
            A ``keras.callbacks.History``.
        """
        callback_list = keras.callbacks.CallbackList(
            list(callbacks),
            add_history=True,
            add_progbar=bool(verbose),
            model=self.model,
            verbose=verbose,
            epochs=epochs,
            steps=len(batches),
        )
        self.model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(int(initial_epoch), int(epochs)):
            callback_list.on_epoch_begin(epoch)
            total = count = 0
            for step in range(len(batches)):
                callback_list.on_train_batch_begin(step)
                images, targets = batches[step][:2]
                images, targets = np.asarray(images), _numpy(targets)
                size = len(images)
                if size < self.world_size:
                    continue
                start, stop = shard_bounds(size, self.rank, self.world_size)
                scale = (stop - start) * self.world_size / size
                loss = self._step(images[start:stop], _take(targets, start, stop), scale)
                loss = self._mean_over_ranks(loss * scale)
                total, count = total + loss, count + 1
                callback_list.on_train_batch_end(step, {"loss": loss})
                if self.model.stop_training:
                    break
            if hasattr(batches, "on_epoch_end"):
                batches.on_epoch_end()
            callback_list.on_epoch_end(epoch, {"loss": total / max(count, 1)})
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return self.model.history

    def _global_batches(self, x, y, global_batch_size, shuffle, seed, epoch):
        if y is None:
            for index in range(len(x)):
                images, targets = x[index][:2]
                yield np.asarray(images), _numpy(targets)
            return
        if global_batch_size is None:
            raise ValueError("global_batch_size is required for array inputs")
        x = np.asarray(x)
        y = _numpy(y)
        order = np.arange(len(x))
        if shuffle:
            order = np.random.default_rng(seed + epoch).permutation(len(x))
        for begin in range(0, len(x), int(global_batch_size)):
            chosen = order[begin : begin + int(global_batch_size)]
            targets = {k: v[chosen] for k, v in y.items()} if isinstance(y, dict) else y[chosen]
            yield x[chosen], targets

    def _mean_over_ranks(self, value):
        if not self.distributed:
            return value
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size


def _numpy(tree):
    if isinstance(tree, dict):
        return {key: np.asarray(value) for key, value in tree.items()}
    return np.asarray(tree)


def train_ddp(model, x, y=None, *, epochs=1, global_batch_size=None, optimizer=None, **kwargs):
    """``DDPTrainer(model, optimizer).fit(x, y, epochs=..., global_batch_size=...)``; returns
    ``(trainer, losses)``."""
    trainer = DDPTrainer(model, optimizer)
    losses = trainer.fit(x, y, epochs=epochs, global_batch_size=global_batch_size, **kwargs)
    return trainer, losses


__all__ = [
    "DDPTrainer",
    "available_devices",
    "init_from_torchrun",
    "shard_bounds",
    "shutdown",
    "train_ddp",
]
