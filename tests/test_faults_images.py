"""Image files must load, and be sized, correctly or fail loudly (issue 22, item 3).

Real files are written with Pillow: 16-bit and other modes are scaled, not clipped; EXIF
orientation puts pixels (and sizes) in the displayed frame; corrupt files are a one-line
``ValueError`` naming the path; a COCO entry whose size differs from its file is reported.
"""

import os
import struct
import zlib

import numpy as np
import pytest

from keras_retinanet.data import CocoDataset, image_size, load_image, verify_images, write_coco
from keras_retinanet.data.csv_dataset import CsvDataset

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")

ORIENTATION = 0x0112


def _rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _scaled16(values):
    return np.asarray([round(int(v) * 255 / 65535) for v in values.ravel()]).reshape(values.shape)


def _assert_grey(loaded, expected):
    assert loaded.dtype == np.uint8 and loaded.shape == (*expected.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(loaded[..., c], expected)


def _gradient16():
    values = np.linspace(0, 65535, 24 * 32).round().astype(np.uint16).reshape(24, 32)
    values[0, :4] = [128, 129, 385, 65534]  # around rounding boundaries
    return values


def _save_exif(pixels, path, orientation, **kwargs):
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    img.save(path, exif=exif, **kwargs)
    return path


# ------------------------------------------------------------------ pixel modes
def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = _gradient16()
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # what Pillow opens a 16-bit PNG as
    loaded = load_image(path)
    _assert_grey(loaded, _scaled16(values))
    assert loaded.min() == 0 and loaded.max() == 255 and len(np.unique(loaded)) > 200


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16bit_tiff_both_byte_orders(tmp_path, dtype):
    values = _gradient16()
    img = Image.fromarray(values.astype(dtype))
    path = tmp_path / f"grey16_{dtype[0] == '>'}.tif"
    img.save(path)
    _assert_grey(load_image(path), _scaled16(values))


def test_32bit_int_mode_uses_the_16bit_range(tmp_path):
    values = _gradient16().astype(np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode == "I"
    _assert_grey(load_image(path), _scaled16(values))

    too_big = tmp_path / "int32_big.tif"
    Image.fromarray(np.asarray([[0, 70000]], dtype=np.int32)).save(too_big)
    with pytest.raises(ValueError, match="int32_big.tif.*outside"):
        load_image(too_big)


def test_float_mode_rules(tmp_path):
    unit = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    _assert_grey(load_image(tmp_path / "unit.tif"), np.rint(unit.astype("float64") * 255))

    wide = np.linspace(0, 255, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    _assert_grey(load_image(tmp_path / "wide.tif"), np.rint(wide.astype("float64")))

    Image.fromarray(np.asarray([[0.0, 300.0]], dtype=np.float32)).save(tmp_path / "bad.tif")
    with pytest.raises(ValueError, match="bad.tif"):
        load_image(tmp_path / "bad.tif")


def _write_png48(path, pixels):
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_48bit_rgb_png_within_one_level(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, size=(6, 7, 3)).astype(np.uint16)
    pixels[0, 0] = [0, 65535, 32768]
    path = tmp_path / "rgb48.png"
    _write_png48(path, pixels)
    loaded = load_image(path)
    assert loaded.shape == (6, 7, 3) and loaded.dtype == np.uint8
    expected = _scaled16(pixels)
    assert np.abs(loaded.astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(loaded[0, 0], [0, 255, 128])


def test_8bit_grey_and_bilevel(tmp_path):
    grey = _rgb(9, 11)[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    _assert_grey(load_image(tmp_path / "grey.png"), grey)

    bits = grey > 127
    Image.fromarray(bits).save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as img:
        assert img.mode == "1"
    _assert_grey(load_image(tmp_path / "bits.png"), np.where(bits, 255, 0))


def test_palette_with_and_without_transparency(tmp_path):
    rgb = _rgb(10, 12)
    pal = Image.fromarray(rgb).quantize(16)
    expected = np.asarray(pal.convert("RGB"))
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png"), expected)

    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal_t.png", transparency=0)
    np.testing.assert_array_equal(load_image(tmp_path / "pal_t.png"), expected)


def test_alpha_is_dropped_not_composited(tmp_path):
    rgb = _rgb(8, 9)
    alpha = np.zeros((8, 9, 1), dtype=np.uint8)  # fully transparent: colours still kept
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1)).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)

    la = np.stack([rgb[..., 0], alpha[..., 0]], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    _assert_grey(load_image(tmp_path / "la.png"), rgb[..., 0])


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(_rgb(16, 16)).convert("CMYK").save(path, quality=100)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        expected = np.asarray(img.convert("RGB"))
    loaded = load_image(path)
    assert loaded.shape == (16, 16, 3)
    np.testing.assert_array_equal(loaded, expected)


# ------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [
        (1, lambda a: a),
        (3, lambda a: a[::-1, ::-1]),
        (6, lambda a: np.rot90(a, k=-1)),  # stored landscape, displayed rotated clockwise
        (8, lambda a: np.rot90(a, k=1)),
        (5, lambda a: np.swapaxes(a, 0, 1)),
    ],
)
def test_exif_orientation_png_exact(tmp_path, orientation, transpose):
    stored = _rgb(10, 16)  # H=10, W=16
    path = _save_exif(stored, tmp_path / f"o{orientation}.png", orientation)
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded, transpose(stored))
    assert image_size(path) == (loaded.shape[1], loaded.shape[0])


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_jpeg(tmp_path, orientation):
    stored = _rgb(24, 40)
    path = _save_exif(stored, tmp_path / f"o{orientation}.jpg", orientation, quality=100)
    with Image.open(path) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded, expected)
    # swapped for 6 (displayed 24 wide, 40 high) but not for 3
    assert image_size(path) == ((24, 40) if orientation == 6 else (40, 24))
    assert loaded.shape[:2] == image_size(path)[::-1]


def test_exif_orientation_16bit(tmp_path):
    values = _gradient16()
    path = _save_exif(values, tmp_path / "o6_16.png", 6)
    _assert_grey(load_image(path), np.rot90(_scaled16(values), k=-1))


def test_image_size_reads_the_header_only(tmp_path, monkeypatch):
    from PIL import ImageFile

    png = _save_exif(_rgb(10, 16), tmp_path / "o6.png", 6)
    jpg = _save_exif(_rgb(10, 16), tmp_path / "o6.jpg", 6)

    def no_decode(self, *args, **kwargs):
        raise AssertionError("image_size decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert image_size(png) == (10, 16)
    assert image_size(jpg) == (10, 16)


# ------------------------------------------------------------------ unreadable files
def test_truncated_and_garbage_files_name_the_path(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_rgb(64, 64)).save(good, quality=95)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")

    for path in (truncated, garbage, empty):
        with pytest.raises(ValueError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert info.value.__cause__ is None  # no PIL traceback chained
    for path in (garbage, empty):
        with pytest.raises(ValueError, match=path.name):
            image_size(path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


# ------------------------------------------------------------------ data sets
def _coco(tmp_path, entries):
    """COCO JSON whose images are ``(file_name, stored H, stored W, json H, json W, exif)``."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    records = []
    for name, h, w, json_h, json_w, orientation in entries:
        pixels = _rgb(h, w)
        if orientation:
            _save_exif(pixels, image_dir / name, orientation)
        else:
            Image.fromarray(pixels).save(image_dir / name)
        records.append(
            {
                "file_name": name,
                "height": json_h,
                "width": json_w,
                "boxes": np.asarray([[1, 1, 5, 5]], dtype="float32"),
                "classes": np.asarray([0], dtype="int32"),
            }
        )
    ann = write_coco(tmp_path / "instances.json", records, ["thing"])
    return CocoDataset(ann, image_dir)


def test_coco_sizes_that_match_pass(tmp_path):
    dataset = _coco(tmp_path, [("a.png", 20, 30, 20, 30, 0), ("r.png", 20, 30, 30, 20, 6)])
    assert dataset.verify_images() == []
    assert dataset.check_image_sizes() == []
    calls = []
    verify_images(dataset.records, what="x", progress=lambda done, total: calls.append(done))
    assert calls == [1, 2]


def test_coco_size_mismatch_names_image_and_both_sizes(tmp_path):
    dataset = _coco(tmp_path, [("a.png", 20, 30, 20, 30, 0), ("b.png", 20, 30, 25, 30, 0)])
    with pytest.raises(ValueError) as info:
        dataset.verify_images()
    message = str(info.value)
    assert "instances.json" in message and "'b.png'" in message
    assert "30x25" in message and "30x20" in message
    assert "EXIF rotation" not in message


def test_coco_exif_rotation_mismatch_is_named(tmp_path):
    # JSON size copied from the stored (unrotated) header: 30 wide, 20 high; displayed 20x30.
    dataset = _coco(tmp_path, [("r.jpg", 20, 30, 20, 30, 6)])
    with pytest.raises(ValueError, match=r"'r.jpg'.*30x20.*20x30.*EXIF rotation mismatch"):
        dataset.verify_images()


def test_verify_collects_all_problems_including_unreadable(tmp_path):
    dataset = _coco(
        tmp_path,
        [("a.png", 20, 30, 20, 31, 0), ("b.png", 20, 30, 20, 30, 0), ("c.png", 8, 8, 8, 8, 0)],
    )
    (tmp_path / "images" / "b.png").write_bytes(b"garbage")
    os.remove(tmp_path / "images" / "c.png")
    problems = dataset.verify_images(raise_errors=False)
    assert len(problems) == 3
    assert "'a.png'" in problems[0] and "31x20" in problems[0]
    assert "'b.png'" in problems[1] and "unreadable" in problems[1]
    assert "'c.png'" in problems[2] and "not found" in problems[2]
    with pytest.raises(ValueError, match="'a.png'"):
        dataset.verify_images()

    no_dir = CocoDataset(tmp_path / "instances.json")
    with pytest.raises(ValueError, match="image_dir"):
        no_dir.verify_images()


def test_verify_images_generic_records(tmp_path):
    Image.fromarray(_rgb(5, 7)).save(tmp_path / "x.png")
    records = [
        {"path": tmp_path / "x.png"},  # no size: readability only
        {"path": None, "width": 1, "height": 1},  # skipped
        {"path": str(tmp_path / "x.png"), "width": 7, "height": 5},
    ]
    assert verify_images(records, what="mine") == []
    with pytest.raises(ValueError, match=r"^mine: image .*x.png.*8x5.*7x5"):
        verify_images([{"path": tmp_path / "x.png", "width": 8, "height": 5}], what="mine")


def test_csv_box_in_the_displayed_frame_is_accepted(tmp_path):
    stored = _rgb(20, 40)  # stored 40 wide x 20 high; orientation 6 displays 20 x 40
    _save_exif(stored, tmp_path / "photo.jpg", 6, quality=95)
    (tmp_path / "classes.csv").write_text("thing,0\n")
    (tmp_path / "ann.csv").write_text("photo.jpg,2,25,18,38,thing\n")  # y2 > stored height
    dataset = CsvDataset(tmp_path / "ann.csv", tmp_path / "classes.csv")
    rec = dataset[0]
    assert (rec["width"], rec["height"]) == (20, 40)
    np.testing.assert_array_equal(rec["boxes"], [[2, 25, 18, 38]])
    assert dataset.load_image(0).shape == (40, 20, 3)
    assert verify_images(dataset.records, what="csv") == []

    # a box valid only in the stored frame is rejected, naming file and line
    (tmp_path / "ann2.csv").write_text("photo.jpg,25,2,38,18,thing\n")
    with pytest.raises(ValueError, match=r"ann2.csv:1: box .* outside image 'photo.jpg' of 20x40"):
        CsvDataset(tmp_path / "ann2.csv", tmp_path / "classes.csv")


def test_csv_unreadable_image_names_file_and_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "classes.csv").write_text("thing,0\n")
    (tmp_path / "ann.csv").write_text("bad.png,,,,,\n")
    with pytest.raises(ValueError, match=r"ann.csv:1: cannot read image file .*bad.png"):
        CsvDataset(tmp_path / "ann.csv", tmp_path / "classes.csv")
