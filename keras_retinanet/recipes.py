"""Named training configurations: the model, input pipeline and optimizer of a training run.

A :class:`TrainingRecipe` gathers what a run needs besides the data: the RetinaNet keywords
(:meth:`~TrainingRecipe.model_kwargs`), the :class:`~keras_retinanet.data.DetectionDataset`
resize and augmentation keywords (:meth:`~TrainingRecipe.data_kwargs`) and the optimizer
(:meth:`~TrainingRecipe.make_optimizer`). ``train --recipe NAME`` uses them; a library user can
too::

    from keras_retinanet import RetinaNet
    from keras_retinanet.data import DetectionDataset
    from keras_retinanet.recipes import get_recipe

    recipe = get_recipe("kerasio")
    batches = DetectionDataset(train_set, batch_size=recipe.global_batch_size(num_devices=1),
                               training=True, **recipe.data_kwargs())
    model = RetinaNet(num_classes=80, backbone_weights="resnet50_notop.h5",
                      **recipe.model_kwargs())
    model.compile(optimizer=recipe.make_optimizer(steps_per_epoch=len(batches), epochs=12))

Recipes
-------
``"kerasio"``
    The keras.io example "Object Detection with RetinaNet" trained on COCO 2017: ResNet50
    (ImageNet weights, from a local file here), P3-P7 pyramid of 256 channels, 4 head convs,
    the paper's anchors (areas 32^2..512^2, 3 ratios, 3 scales); random horizontal flip, the
    short side drawn from [640, 1024] (:data:`~keras_retinanet.data.KERAS_IO_JITTER`), the
    long side at most 1333, padded to a multiple of 128; 2 images per device; SGD, momentum
    0.9, with the example's piecewise-constant learning rate: 2.5e-6 for 125 steps (warm-up),
    6.25e-4 to step 250, 1.25e-3 to step 500, 2.5e-3 to step 240 000, 2.5e-4 to 360 000, then
    2.5e-5. The example's code adds no weight decay; the recipe adds the paper's L2 weight
    decay of 1e-4 (Lin et al. 2017, section 5.1, as Detectron2 does) to every weight except
    batch-norm scales and offsets. See docs/numerics.md, "Training recipes".

    Other batch sizes (by default the global batch is ``2 x num_devices``): the learning
    rates are multiplied and the step boundaries divided by ``global_batch / 2`` (the linear
    scaling rule of Goyal et al. 2017), so that each phase of the schedule covers the same
    number of images. The same global batch on 1 or N devices gives the same schedule.
``"demo"``
    The ``train`` command's defaults: the compact backbone, a 64-channel pyramid, 2 head convs,
    anchors one octave smaller (16^2..256^2), square 128 x 128 inputs, AdamW with a cosine
    schedule and a short warm-up. Sized for the synthetic shapes data on a CPU.
"""

import dataclasses

import keras

__all__ = ["RECIPES", "TrainingRecipe", "get_recipe", "list_recipes"]

#: The keras.io example's piecewise-constant schedule, for its batch of 2 images.
KERASIO_LEARNING_RATES = (2.5e-06, 0.000625, 0.00125, 0.0025, 0.00025, 2.5e-05)
KERASIO_BOUNDARIES = (125, 250, 500, 240000, 360000)
#: Names of the variables the recipes leave out of weight decay (batch-norm scale and
#: offset; decaying them only shrinks the normalised activations).
NO_DECAY_VARIABLES = ("gamma", "beta")


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """A named training configuration (see the module docstring for the two recipes).

    Attributes:
        name: the recipe's name (``train --recipe NAME``).
        backbone: registered backbone name.
        needs_backbone_weights: whether the recipe assumes pretrained backbone weights
            (``train`` then asks for ``--backbone-weights``).
        anchor_areas: ``AnchorGenerator`` areas, ``None`` for its (the paper's) defaults.
        fpn_filters, head_convs: RetinaNet's pyramid width and head depth.
        min_side, max_side, stride, jitter, image_size, flip: the ``DetectionDataset``
            resize and augmentation keywords (``image_size`` fixes a square size).
        batch_size_per_device: images per device and step.
        optimizer: ``"sgd"`` (piecewise-constant rates) or ``"adamw"`` (cosine decay).
        learning_rates, boundaries: SGD's piecewise-constant rates and the steps where they
            change, at one device; for AdamW ``learning_rates[0]`` is the peak rate.
        momentum: SGD momentum.
        weight_decay: decoupled weight decay (``variable -= lr * weight_decay * variable``
            each step; ``0`` for none).
        global_clipnorm: gradient clipping (``None`` for none).
        decay_norm: whether batch-norm ``gamma``/``beta`` decay too (keras.io: no).
        scale_with_batch: SGD's linear scaling: rates times, boundaries divided by
            ``global_batch_size / batch_size_per_device`` (the batch the rates were set for).
    """

    name: str
    backbone: str
    needs_backbone_weights: bool
    anchor_areas: tuple | None
    fpn_filters: int
    head_convs: int
    min_side: int
    max_side: int
    stride: int
    jitter: tuple | None
    image_size: int | None
    flip: bool
    batch_size_per_device: int
    optimizer: str
    learning_rates: tuple
    boundaries: tuple = ()
    momentum: float = 0.0
    weight_decay: float = 0.0
    global_clipnorm: float | None = None
    decay_norm: bool = False
    scale_with_batch: bool = False

    def global_batch_size(self, num_devices=1):
        """Images per step over all devices."""
        return self.batch_size_per_device * int(num_devices)

    def model_kwargs(self):
        """``RetinaNet`` keywords (the backbone weights are the caller's)."""
        from keras_retinanet.anchors import AnchorGenerator

        areas = self.anchor_areas
        return {
            "backbone": self.backbone,
            "anchor_generator": AnchorGenerator(areas=areas) if areas else AnchorGenerator(),
            "fpn_filters": self.fpn_filters,
            "head_convs": self.head_convs,
        }

    def data_kwargs(self):
        """``DetectionDataset`` resize and augmentation keywords (training)."""
        size = self.image_size
        return {
            "min_side": self.min_side,
            "max_side": self.max_side,
            "stride": self.stride,
            "jitter": self.jitter,
            "image_size": None if size is None else (size, size),
            "flip": self.flip,
        }

    def run_sizes(self):
        """The inference resize of a model trained with this recipe (``run.json`` entries):
        the jitter range's centre is not used; inference takes ``min_side`` (800 for
        keras.io, as the example evaluates)."""
        size = self.image_size
        return {
            "min_side": self.min_side,
            "max_side": self.max_side,
            "stride": self.stride,
            "image_size": None if size is None else [size, size],
        }

    def batch_scale(self, global_batch_size=None):
        """The linear-scaling factor for ``global_batch_size`` (1 without
        ``scale_with_batch``, or when ``None``: the recipe's own batch)."""
        if global_batch_size is None or not self.scale_with_batch:
            return 1.0
        if isinstance(global_batch_size, bool) or int(global_batch_size) < 1:
            raise ValueError(f"global_batch_size must be positive, got {global_batch_size!r}")
        return int(global_batch_size) / self.batch_size_per_device

    def learning_rate_schedule(self, *, steps_per_epoch, epochs, global_batch_size=None):
        """The learning rate as a ``keras.optimizers.schedules`` object.

        SGD: piecewise constant; with ``scale_with_batch`` the rates are multiplied and the
        boundaries divided by :meth:`batch_scale` (boundaries stay at least 1 step apart).
        AdamW: cosine decay to 0 over all steps after a linear warm-up of
        ``min(100, steps / 10)`` steps to ``learning_rates[0]``.
        """
        n = self.batch_scale(global_batch_size)
        if self.optimizer == "sgd":
            bounds, last = [], 0
            for b in self.boundaries:
                last = max(last + 1, round(b / n))
                bounds.append(last)
            return keras.optimizers.schedules.PiecewiseConstantDecay(
                bounds, [rate * n for rate in self.learning_rates]
            )
        steps = max(1, int(steps_per_epoch) * int(epochs))
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            steps,
            warmup_target=self.learning_rates[0],
            warmup_steps=max(1, min(100, steps // 10)),
        )

    def make_optimizer(self, *, steps_per_epoch, epochs, global_batch_size=None):
        """A fresh Keras optimizer with :meth:`learning_rate_schedule` and the weight decay
        (batch-norm ``gamma``/``beta`` excluded unless ``decay_norm``)."""
        schedule = self.learning_rate_schedule(
            steps_per_epoch=steps_per_epoch, epochs=epochs, global_batch_size=global_batch_size
        )
        decay = self.weight_decay or None
        if self.optimizer == "sgd":
            optimizer = keras.optimizers.SGD(
                schedule,
                momentum=self.momentum,
                weight_decay=decay,
                global_clipnorm=self.global_clipnorm,
            )
        elif self.optimizer == "adamw":
            optimizer = keras.optimizers.AdamW(
                schedule, weight_decay=self.weight_decay, global_clipnorm=self.global_clipnorm
            )
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if decay and not self.decay_norm:
            optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_VARIABLES))
        return optimizer

    def with_peak_learning_rate(self, learning_rate):
        """The recipe with every learning rate scaled so that the largest is
        ``learning_rate`` (``train --learning-rate``)."""
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
        factor = float(learning_rate) / max(self.learning_rates)
        rates = tuple(rate * factor for rate in self.learning_rates)
        return dataclasses.replace(self, learning_rates=rates)

    def to_dict(self):
        """The recipe as JSON-able values (``run.json``'s ``recipe`` entry)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


#: Sizes of the demo's images and anchors (``train``'s defaults).
DEMO_IMAGE_SIZE = 128
DEMO_ANCHOR_AREAS = (16.0**2, 32.0**2, 64.0**2, 128.0**2, 256.0**2)

RECIPES = {
    "kerasio": TrainingRecipe(
        name="kerasio",
        backbone="resnet50",
        needs_backbone_weights=True,
        anchor_areas=None,
        fpn_filters=256,
        head_convs=4,
        min_side=800,
        max_side=1333,
        stride=128,
        jitter=(640, 1024),
        image_size=None,
        flip=True,
        batch_size_per_device=2,
        optimizer="sgd",
        learning_rates=KERASIO_LEARNING_RATES,
        boundaries=KERASIO_BOUNDARIES,
        momentum=0.9,
        weight_decay=1e-4,
        scale_with_batch=True,
    ),
    "demo": TrainingRecipe(
        name="demo",
        backbone="compact",
        needs_backbone_weights=False,
        anchor_areas=DEMO_ANCHOR_AREAS,
        fpn_filters=64,
        head_convs=2,
        min_side=DEMO_IMAGE_SIZE,
        max_side=DEMO_IMAGE_SIZE,
        stride=128,
        jitter=None,
        image_size=DEMO_IMAGE_SIZE,
        flip=True,
        batch_size_per_device=16,
        optimizer="adamw",
        learning_rates=(3e-3,),
        weight_decay=1e-4,
        global_clipnorm=10.0,
        decay_norm=True,
    ),
}


def list_recipes():
    """Names of the recipes."""
    return sorted(RECIPES)


def get_recipe(name):
    """The :class:`TrainingRecipe` called ``name`` (``ValueError`` listing the names)."""
    if isinstance(name, TrainingRecipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(list_recipes())}")
    return RECIPES[name]
