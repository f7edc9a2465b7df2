"""Data sets, preprocessing and input pipelines.

Importing this package needs only Keras and NumPy; Pillow is imported when pixels are read,
resized or generated.
"""

from keras_retinanet.data.coco import CocoDataset, load_coco, write_coco
from keras_retinanet.data.csv_dataset import (
    CsvDataset,
    load_csv,
    read_csv_classes,
    records_to_coco,
    write_csv,
)
from keras_retinanet.data.pipeline import DetectionDataset, InferenceBatches
from keras_retinanet.data.preprocessing import (
    CAFFE_BGR_MEAN,
    KERAS_IO_JITTER,
    compute_resize_ratio,
    image_size,
    load_image,
    normalize_image,
    preprocess_for_inference,
    preprocess_for_training,
    random_flip_horizontal,
    resize_and_pad,
    resize_image,
)
from keras_retinanet.data.shapes import (
    SHAPE_CLASSES,
    ShapesDatasetPaths,
    generate_shapes_dataset,
    render_shapes_image,
)
from keras_retinanet.data.verify import verify_images
from keras_retinanet.data.voc import VOC_CLASSES, VOC_SPLITS, VocDataset, load_voc, write_voc

__all__ = [
    "CAFFE_BGR_MEAN",
    "KERAS_IO_JITTER",
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "VOC_SPLITS",
    "CocoDataset",
    "CsvDataset",
    "VocDataset",
    "DetectionDataset",
    "InferenceBatches",
    "ShapesDatasetPaths",
    "compute_resize_ratio",
    "generate_shapes_dataset",
    "image_size",
    "load_coco",
    "load_csv",
    "load_image",
    "load_voc",
    "normalize_image",
    "preprocess_for_inference",
    "preprocess_for_training",
    "random_flip_horizontal",
    "read_csv_classes",
    "records_to_coco",
    "render_shapes_image",
    "resize_and_pad",
    "resize_image",
    "verify_images",
    "write_coco",
    "write_csv",
    "write_voc",
]
