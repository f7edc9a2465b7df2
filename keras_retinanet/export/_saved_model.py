"""``format="tf_saved_model"``: a ``RetinaNetDetector`` as a TensorFlow SavedModel.

Written with Keras' public ``keras.export.ExportArchive``: one endpoint ``serve`` (also the
``serving_default`` signature) taking ``images`` and returning the ``boxes``, ``scores``,
``classes`` and ``num_detections`` of ``detector.predict``. The artifact needs TensorFlow only
(neither Keras nor this package) to be loaded and run: ``tf.saved_model.load(path).serve(x)``.

* TensorFlow backend: the detector's graph, NMS included
  (``tf.image.combined_non_max_suppression``). Batch, height and width may all be dynamic.
* JAX backend: ``jax2tf`` serializes the detector, NMS included, as StableHLO
  (an ``XlaCallModule`` op; the artifact runs on the platform it was exported on, CPU here).
  The batch size is dynamic (a shape-polymorphic dimension); the image size must be fixed with
  ``image_size=(H, W)``: the JAX NMS works on a static number of candidates
  (``anchors x classes``), and shape polymorphism cannot express the model's strided
  convolutions and the anchor count of an unknown ``H x W``. Gradients are not exported
  (``with_gradient=False``): jax2tf's custom gradient cannot be saved and serving needs none.

  ``lax.top_k`` lowers to ``chlo.top_k``, which JAX serializes as a ``vhlo.composite_v2`` op
  of a StableHLO release newer than the one TensorFlow's ``XlaCallModule`` reads (JAX 0.10
  targets StableHLO 1.15, TF 2.21 reads 1.13.7: "unregistered operation 'vhlo.composite_v2'"
  at load time). While exporting,
  ``top_k`` is therefore lowered as a stable sort followed by a slice, which gives the same
  values and indices (ties to the lower index, as ``top_k``); the previous lowering rule is
  restored afterwards.
"""

import contextlib

import keras

from keras_retinanet.export import OUTPUT_NAMES, check_format


def export_saved_model(detector, filepath, *, image_size=None, verbose=True):
    """Writes ``detector`` as a SavedModel folder ``filepath`` (see the module docstring).

    Args:
        detector: a ``RetinaNetDetector`` whose model is built.
        filepath: the SavedModel folder to write.
        image_size: ``None`` (dynamic ``H, W``: TensorFlow backend only) or ``(H, W)``.
        verbose: print the written endpoint.

    Raises:
        TypeError: ``detector`` is not a ``RetinaNetDetector``.
        ValueError: the backend cannot write a SavedModel, the model is not built, a bad
            ``image_size``, or ``image_size=None`` on JAX (all before any tracing).
        ImportError: TensorFlow is not installed.
    """
    from keras_retinanet.decoder import RetinaNetDetector

    check_format("tf_saved_model")
    if not isinstance(detector, RetinaNetDetector):
        raise TypeError(
            "export_saved_model needs a RetinaNetDetector (model.make_detector()), got "
            f"{type(detector).__name__}"
        )
    image_size = _check_image_size(image_size)
    backend = keras.backend.backend()
    if backend == "jax" and image_size is None:
        raise ValueError(
            "exporting a tf_saved_model from the JAX backend needs a fixed "
            "image_size=(height, width): the JAX NMS works on static shapes, so only the batch "
            "size can stay dynamic (the TensorFlow backend also supports image_size=None)"
        )
    if not detector.model.built:
        raise ValueError(
            "the detector's model is not built: build it (model.build((None, None, None, 3))) "
            "or call it on a batch of images before exporting"
        )
    try:
        import tensorflow as tf
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "format='tf_saved_model' needs TensorFlow installed (also from the JAX backend)"
        ) from error

    height, width = image_size if image_size is not None else (None, None)
    if detector.model.data_format == "channels_first":
        shape = (None, 3, height, width)
    else:
        shape = (None, height, width, 3)
    signature = [tf.TensorSpec(shape, tf.float32, name="images")]

    def serve(images):
        # ``RetinaNetDetector.call`` with the decoder's ``call`` rather than ``__call__``: a
        # detector that was never called (``make_detector()`` of a built model) is exported
        # without being built, so the user's object is left as it was. Its only variables are
        # the model's, tracked below (the decoder has none).
        outputs = detector.decoder.call(images, detector.model(images, training=False))
        return {name: outputs[name] for name in OUTPUT_NAMES}

    endpoint_kwargs = {}
    if backend == "jax":
        # Keras fills in native serialization and the polymorphic shapes ("batch" for the
        # None batch dimension).
        endpoint_kwargs["jax2tf_kwargs"] = {"with_gradient": False}
    archive = keras.export.ExportArchive()
    with _tf_compatible_top_k() if backend == "jax" else contextlib.nullcontext():
        archive.track(detector.model)
        archive.add_endpoint("serve", serve, input_signature=signature, **endpoint_kwargs)
        archive.write_out(
            str(filepath),
            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
            verbose=verbose,
        )


def _check_image_size(image_size):
    if image_size is None:
        return None
    try:
        size = tuple(int(s) for s in image_size)
        exact = all(int(s) == s for s in image_size)
    except (TypeError, ValueError):
        size, exact = (), False
    if len(size) != 2 or min(size) < 1 or not exact:
        raise ValueError(f"image_size must be None or (height, width), got {image_size!r}")
    return size


def _sorted_top_k(operand, *, k, axis=-1, **unused):
    """``lax.top_k`` as a stable sort and a slice: the same values and indices (the larger
    first, ties to the lower index; NaN above +inf and +0.0 above -0.0, the total order of
    XLA's ``TopK`` comparator)."""
    import jax.numpy as jnp
    from jax import lax

    axis = axis % operand.ndim
    x = jnp.moveaxis(operand, axis, -1)
    last = x.ndim - 1
    position = lax.broadcasted_iota(jnp.int32, x.shape, last)
    # Ascending on -x (~x for integers, which cannot overflow) is descending on x.
    key = -x if jnp.issubdtype(x.dtype, jnp.floating) else ~x
    _, values, index = lax.sort((key, x, position), dimension=last, num_keys=1, is_stable=True)
    values = lax.slice_in_dim(values, 0, k, axis=last)
    index = lax.slice_in_dim(index, 0, k, axis=last)
    return [jnp.moveaxis(values, -1, axis), jnp.moveaxis(index, -1, axis)]


@contextlib.contextmanager
def _tf_compatible_top_k():
    """Lowers ``lax.top_k`` with :func:`_sorted_top_k` inside the block (see the module
    docstring), then restores the previous rule. A JAX without the (private) rule table
    keeps its own lowering."""
    from jax import lax
    from jax.interpreters import mlir

    table = getattr(mlir, "_lowerings", None)
    primitive = getattr(lax, "top_k_p", None)
    if not isinstance(table, dict) or primitive not in table:
        yield
        return
    previous = table[primitive]
    mlir.register_lowering(primitive, mlir.lower_fun(_sorted_top_k, multiple_results=True))
    try:
        yield
    finally:
        table[primitive] = previous
