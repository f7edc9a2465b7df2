"""Pretrained COCO RetinaNets: torchvision's published checkpoints, converted when loaded.

A :class:`Preset` names one published checkpoint and everything needed to run it as
torchvision does: the architecture (:func:`keras_retinanet.variants.torchvision_retinanet`),
the input (RGB in ``[0, 1]`` normalised with the ImageNet mean/std, short side 800, long side
at most 1333, zero padding to a multiple of 32), the decoding
(:data:`keras_retinanet.decoder.TORCHVISION_DECODING`) and the 91 class slots, whose index is
the COCO category id::

    model = keras_retinanet.RetinaNet.from_preset("retinanet_resnet50_fpn_coco", weights=PTH)
    preset = get_preset("retinanet_resnet50_fpn_coco")
    detector = model.make_detector(**preset.decoding())
    batches = InferenceBatches(records, **preset.preprocessing())

Nothing is bundled: without ``weights`` the checkpoint is downloaded from torchvision's URL into
``$KERAS_HOME/keras_retinanet`` (``~/.keras/keras_retinanet``) and its SHA-256 verified.

Checksums: torchvision names each file with the first 8 hex digits of its SHA-256, and
``torch.hub`` checks only that prefix. :attr:`Preset.sha256` holds the full digests, found in
two public sources each that hashed the files downloaded from torchvision's URLs (listed
where :data:`PRESETS` is defined); their first 8 digits are the file names' and their sizes
are torchvision's recorded ``_file_size``. :func:`verify_checksum` checks as many digits as
the preset holds, so a preset with only a prefix is verified as ``torch.hub`` does.
"""

import dataclasses
import hashlib
import os
import re
import types

from keras_retinanet.variants import (
    TORCHVISION_IMAGE_MEAN,
    TORCHVISION_IMAGE_STD,
    check_torchvision_version,
)

#: Subfolder of the Keras cache (``$KERAS_HOME``, else ``~/.keras``) for downloaded checkpoints.
CACHE_SUBDIR = "keras_retinanet"

#: The 91 class slots of torchvision's COCO detection models: index = COCO category id, 0 the
#: background and ``"N/A"`` the 10 ids of 1..90 that COCO never used (torchvision's
#: ``_COCO_CATEGORIES``).
COCO_CATEGORY_NAMES = (
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

#: Terms of the published checkpoints, as far as torchvision states them.
TORCHVISION_LICENSE = (
    "torchvision's code is BSD-3-Clause. The weights are torchvision's published COCO "
    "weights, trained on COCO 2017 (annotations CC BY 4.0; the images keep their Flickr "
    "terms); torchvision attaches no separate license to them and warns that pretrained "
    "weights may carry terms of their training data: check that your use is allowed."
)

#: torchvision's ``GeneralizedRCNNTransform`` defaults of its COCO RetinaNets (``min_size``,
#: ``max_size``, ``size_divisible``), shared by every preset.
TORCHVISION_MIN_SIDE, TORCHVISION_MAX_SIDE, TORCHVISION_STRIDE = 800, 1333, 32

_HEX = re.compile(r"^[0-9a-f]{8,64}$")


@dataclasses.dataclass(frozen=True, repr=False)
class Preset:
    """One published checkpoint and how to run it.

    Attributes:
        name: the preset's name (the key in :data:`PRESETS`).
        description: one line for listings.
        version: torchvision architecture, ``"v1"`` or ``"v2"``
            (:func:`keras_retinanet.variants.torchvision_retinanet`).
        url: where the checkpoint is published.
        file_name: its file name; a local file of this name passed as ``weights`` is verified.
        sha256: lowercase hex SHA-256 of the file: all 64 digits, or a prefix of at least 8
            (``torch.hub``'s check) when only that is known; :func:`verify_checksum` checks
            the digits given.
        file_size: the file's size in bytes, or ``None``; checked before hashing, so a
            truncated download is reported as such.
        box_ap: published COCO box AP (``metric``).
        metric: what ``box_ap`` measures and whose figure it is.
        category_names: name of each class slot; a label index is its COCO category id.
        batch_norm_epsilon: the backbone's batch-norm epsilon torchvision runs the checkpoint
            with (0 for the v1 COCO weights, which torchvision loads with
            ``overwrite_eps(model, 0.0)``; PyTorch's 1e-5 otherwise).
        normalization: input normalisation (``"torchvision"``: RGB / 255, minus
            ``image_mean``, divided by ``image_std``;
            :func:`keras_retinanet.data.preprocessing.normalize_image`).
        image_mean, image_std: the per-channel RGB statistics of ``normalization``.
        min_side, max_side, stride: resize (short side ``min_side``, long side at most
            ``max_side``) and zero padding to a multiple of ``stride``, torchvision's 800 /
            1333 / 32.
        license: terms of the code and the weights.
    """

    name: str
    description: str
    version: str
    url: str
    file_name: str
    sha256: str
    box_ap: float
    file_size: int | None = None
    metric: str = "COCO val2017 box AP, torchvision's published figure"
    category_names: tuple = COCO_CATEGORY_NAMES
    batch_norm_epsilon: float = 1e-5
    normalization: str = "torchvision"
    image_mean: tuple = TORCHVISION_IMAGE_MEAN
    image_std: tuple = TORCHVISION_IMAGE_STD
    min_side: int = TORCHVISION_MIN_SIDE
    max_side: int = TORCHVISION_MAX_SIDE
    stride: int = TORCHVISION_STRIDE
    license: str = TORCHVISION_LICENSE

    def __post_init__(self):
        check_torchvision_version(self.version)
        if not isinstance(self.sha256, str) or not _HEX.match(self.sha256):
            raise ValueError(
                "sha256 must be 8 to 64 lowercase hex digits (the file's SHA-256 or a prefix "
                f"of it), got {self.sha256!r}"
            )
        if not self.file_name or os.path.basename(self.file_name) != self.file_name:
            raise ValueError(f"file_name must be a bare file name, got {self.file_name!r}")
        object.__setattr__(self, "category_names", tuple(self.category_names))

    @property
    def num_classes(self):
        """Class slots of the checkpoint (91 for torchvision's COCO models)."""
        return len(self.category_names)

    @property
    def full_checksum(self):
        """Whether :attr:`sha256` is the whole digest (else only its prefix is verified)."""
        return len(self.sha256) == 64

    def decoding(self):
        """``RetinaNet.make_detector`` arguments reproducing torchvision's postprocessing
        (:data:`keras_retinanet.decoder.TORCHVISION_DECODING`)."""
        from keras_retinanet.decoder import TORCHVISION_DECODING

        return dict(TORCHVISION_DECODING)

    def preprocessing(self):
        """``InferenceBatches`` / ``preprocess_for_inference`` arguments for this checkpoint."""
        return {
            "normalization": self.normalization,
            "min_side": self.min_side,
            "max_side": self.max_side,
            "stride": self.stride,
        }

    def run_config(self):
        """What the command line keeps in ``run.json`` beside a converted model: the input,
        decoding and class names of this preset (see :func:`torchvision_run_config`)."""
        return torchvision_run_config(self.version, self.num_classes, preset=self)

    def __repr__(self):
        check = "sha256" if self.full_checksum else f"sha256 prefix {self.sha256}"
        return (
            f"Preset({self.name!r}, torchvision {self.version}, box AP {self.box_ap}, "
            f"{self.num_classes} classes, {self.file_name}, {check})"
        )


def torchvision_run_config(version, num_classes, *, preset=None):
    """The ``run.json`` entries that make ``predict``/``evaluate --model`` run a converted
    torchvision checkpoint as torchvision does.

    Args:
        version: ``"v1"`` or ``"v2"``.
        num_classes: class slots of the checkpoint.
        preset: the :class:`Preset` it came from, or ``None`` (a checkpoint of one's own:
            with 91 slots, torchvision's COCO layout, the COCO names are used, else the slot
            indices).

    Returns:
        a JSON-serialisable dict: ``preset``, ``torchvision_version``, the preprocessing
        (``normalization``, ``min_side``, ``max_side``, ``stride``, ``image_size`` ``None``),
        ``decoding`` (``make_detector`` arguments), ``class_names`` and
        ``class_to_category_id`` (the identity: a torchvision label is a COCO category id).
    """
    check_torchvision_version(version)
    if preset is not None:
        name, names = preset.name, preset.category_names
        preprocessing, decoding = preset.preprocessing(), preset.decoding()
    else:
        from keras_retinanet.decoder import TORCHVISION_DECODING

        name = None
        coco = num_classes == len(COCO_CATEGORY_NAMES)
        names = COCO_CATEGORY_NAMES if coco else tuple(str(i) for i in range(num_classes))
        preprocessing = {
            "normalization": "torchvision",
            "min_side": TORCHVISION_MIN_SIDE,
            "max_side": TORCHVISION_MAX_SIDE,
            "stride": TORCHVISION_STRIDE,
        }
        decoding = dict(TORCHVISION_DECODING)
    return {
        "preset": name,
        "torchvision_version": version,
        **preprocessing,
        "image_size": None,
        "decoding": decoding,
        "class_names": list(names),
        "class_to_category_id": list(range(num_classes)),
    }


# Full SHA-256 digests, each from two sources that hashed the downloaded files:
# - v1: Libre-YOLO/libreyolo weights/upload_retinanet_hf.py (commit bc28d69a) and an
#   independent table of torchvision checkpoints with sizes and SHA-256 (136,595,076 bytes);
# - v2: the same LibreYOLO file, a VOST tracking report pinning the artifact's SHA-256 and a
#   model-artifact manifest listing it with its size (153,130,989 bytes).
# Both begin with the 8 digits in torchvision's file names, and both sizes are torchvision's
# ``_file_size`` (130.267 and 146.037 MiB).
_PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            name="retinanet_resnet50_fpn_coco",
            description="torchvision retinanet_resnet50_fpn, COCO (the paper's recipe)",
            version="v1",
            url="https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth",
            file_name="retinanet_resnet50_fpn_coco-eeacb38b.pth",
            sha256="eeacb38b7cec8cf93c57867e05eaab621047f19b0d2ec5accaa405f690da15b7",
            file_size=136_595_076,
            box_ap=36.4,
            batch_norm_epsilon=0.0,
        ),
        Preset(
            name="retinanet_resnet50_fpn_v2_coco",
            description="torchvision retinanet_resnet50_fpn_v2, COCO (improved recipe, "
            "GroupNorm heads)",
            version="v2",
            url="https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
            file_name="retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
            sha256="5905b1c544219215e544dbe319720397bc4e68de61a733a59350d7976645b769",
            file_size=153_130_989,
            box_ap=41.5,
            batch_norm_epsilon=1e-5,
        ),
    )
}

#: Every preset by name (read-only).
PRESETS = types.MappingProxyType(_PRESETS)


def list_presets():
    """The preset names, sorted."""
    return sorted(PRESETS)


def presets_table():
    """A Markdown table of the presets: name, architecture, COCO box AP, source URL."""
    rows = [
        "| preset | torchvision model | COCO val2017 box AP | source |",
        "| --- | --- | --- | --- |",
    ]
    model_names = {"v1": "retinanet_resnet50_fpn", "v2": "retinanet_resnet50_fpn_v2"}
    for name in list_presets():
        p = PRESETS[name]
        rows.append(f"| `{name}` | `{model_names[p.version]}` | {p.box_ap} | {p.url} |")
    return "\n".join(rows)


def get_preset(preset):
    """The :class:`Preset` named ``preset`` (a ``Preset`` is returned as it is).

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise ValueError(f"preset must be one of {list_presets()}, got {preset!r}")


def sha256_of(path, chunk_size=1 << 20):
    """The lowercase hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path, sha256, *, file_size=None):
    """Checks the file at ``path`` against ``sha256`` (and ``file_size`` when given).

    ``sha256`` is the whole hex digest, checked in full, or a prefix of it, checked as
    ``torch.hub`` checks the 8 digits in torchvision's file names (the first
    ``len(sha256)`` digits must agree).

    Returns:
        the file's full hex digest.

    Raises:
        ValueError: naming the file, the expected and the actual size or digest, when they
            differ.
    """
    path = os.fspath(path)
    if file_size is not None:
        size = os.path.getsize(path)
        if size != file_size:
            raise ValueError(
                f"{path!r} has {size} bytes, expected {file_size} (an incomplete download, or "
                "another file)"
            )
    digest = sha256_of(path)
    if digest[: len(sha256)] != sha256.lower():
        what = "SHA-256" if len(sha256) == 64 else f"SHA-256 prefix ({len(sha256)} hex digits)"
        raise ValueError(
            f"{path!r} does not match the expected {what}: expected {sha256}, got {digest}"
        )
    return digest


def download_weights(preset, *, cache_dir=None):
    """Downloads ``preset``'s checkpoint into the Keras cache and verifies it.

    The file goes to ``<cache_dir>/keras_retinanet/<file_name>`` with
    ``keras.utils.get_file``; ``cache_dir`` defaults to ``$KERAS_HOME`` as set when this is
    called, else Keras' default (``~/.keras``). A file already there is not downloaded again,
    only verified.

    Returns:
        the local path of the verified file.

    Raises:
        OSError: when the download fails (no network, HTTP error); the message gives the URL
            to fetch elsewhere and pass as ``weights=PATH``.
        ValueError: when the file does not match the preset's checksum; the file is deleted
            from the cache first, so the next call downloads it again.
    """
    import keras

    preset = get_preset(preset)
    if cache_dir is None:
        # Keras reads KERAS_HOME once, when it is imported; read it now instead.
        cache_dir = os.environ.get("KERAS_HOME")
    if cache_dir is not None:
        # get_file falls back to /tmp/.keras when the folder is not (yet) writable.
        try:
            os.makedirs(os.path.expanduser(cache_dir), exist_ok=True)
        except OSError:
            pass
    try:
        path = keras.utils.get_file(
            preset.file_name, preset.url, cache_subdir=CACHE_SUBDIR, cache_dir=cache_dir
        )
    except Exception as error:  # get_file reports network failures as a bare Exception
        raise OSError(
            f"could not download the {preset.name!r} checkpoint from {preset.url} "
            f"({str(error).strip() or type(error).__name__}). Download that file on a machine "
            "with network access and pass its local path: weights=PATH in Python, --weights "
            "PATH on the command line"
        ) from error
    try:
        verify_checksum(path, preset.sha256, file_size=preset.file_size)
    except ValueError as error:
        os.remove(path)
        raise ValueError(
            f"the downloaded {preset.name!r} checkpoint is corrupt and was removed from the "
            f"cache: {error}. Call again to download it again, or download {preset.url} "
            "elsewhere and pass weights=PATH"
        ) from error
    return path


def from_preset(preset, *, weights=None, data_format=None, **kwargs):
    """A ``RetinaNet`` holding a published torchvision COCO checkpoint.

    Args:
        preset: a name from :data:`PRESETS` (see :func:`list_presets`) or a :class:`Preset`.
        weights: ``None`` (download the checkpoint from ``preset.url`` into the Keras cache,
            see :func:`download_weights`) or the path of a local copy: the published ``.pth``
            (needs PyTorch to read; verified against ``preset.sha256`` when its file name is
            the published one) or a ``.safetensors`` file of the same state dict (needs
            ``safetensors``). A file of any other name is trusted as given: only its tensor
            names and shapes are checked, by the conversion.
        data_format: layout of the images the model takes (``None``:
            ``keras.config.image_data_format()``).
        **kwargs: other ``RetinaNet`` arguments (``fast_paths``, ``name``).

    Returns:
        A built ``RetinaNet`` (:func:`keras_retinanet.convert.from_torchvision` with the
        preset's version and batch-norm epsilon) whose ``preset`` attribute is the preset's
        name. ``model(x)`` takes ``[N, H, W, 3]`` images preprocessed as
        ``preset.preprocessing()`` says
        (:func:`keras_retinanet.data.preprocessing.preprocess_for_inference`) and returns
        ``[N, A, 4 + 91]`` raw outputs; ``model.make_detector(**preset.decoding())`` decodes
        them as torchvision does, with labels that are COCO category ids
        (``preset.category_names`` names them).

    Raises:
        ValueError: for an unknown preset; a ``weights`` path that is not an existing file; a
            published file (or download) whose checksum differs; a checkpoint that does not
            fit the preset's architecture (see ``from_torchvision``).
        OSError: when the download fails (the message says to pass ``weights=PATH``).
        ImportError: when the library needed to read the file is missing.
    """
    from keras_retinanet.convert import from_torchvision

    preset = get_preset(preset)
    if weights is None:
        path = download_weights(preset)
    else:
        if not isinstance(weights, str | os.PathLike) or not os.path.isfile(weights):
            raise ValueError(
                f"weights must be the path of an existing .pth or .safetensors file, got "
                f"{weights!r}"
            )
        path = os.fspath(weights)
        if os.path.basename(path) == preset.file_name:
            verify_checksum(path, preset.sha256, file_size=preset.file_size)
    model = from_torchvision(
        path,
        version=preset.version,
        data_format=data_format,
        batch_norm_epsilon=preset.batch_norm_epsilon,
        **kwargs,
    )
    if model.num_classes != preset.num_classes:
        raise ValueError(
            f"weights {path!r} hold {model.num_classes} class slots, but preset "
            f"{preset.name!r} names {preset.num_classes}"
        )
    model.preset = preset.name
    return model
