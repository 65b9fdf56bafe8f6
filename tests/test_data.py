"""Preprocess stage: CIFAR-10 batches and image folders -> cached uint8
arrays; the restricted unpickler; balanced subsets; the content-keyed cache."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_pipeline.cache import load_arrays, preprocess, read_meta
from alexnet_pipeline.config import DataConfig
from alexnet_pipeline.data import ImageFolderSource, balanced_subset, decode_image, load_cifar10_arrays
from alexnet_pipeline.download import BATCH_FILES, ensure_cifar10
from alexnet_pipeline.errors import DataError
from tests.conftest import run_python_with_permissions_enforced
from tests.cifar_archive import cifar_batch
from tests.fixtures import CLASS_NAMES, make_image_folder


@pytest.fixture(scope="module")
def cifar_batches(module_tmp, cifar_archive_dir) -> Path:
    data_dir = module_tmp("cifar-data")
    (data_dir / "cifar-10-python.tar.gz").write_bytes((cifar_archive_dir / "cifar-10-python.tar.gz").read_bytes())
    return ensure_cifar10(data_dir, verify=False, progress=False)


# --- CIFAR-10 batches --------------------------------------------------------------


def test_cifar_batches_become_uint8_arrays(cifar_batches):
    arrays = load_cifar10_arrays(cifar_batches)
    assert arrays.train_images.shape == (50, 32, 32, 3) and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == (20, 32, 32, 3)
    assert arrays.train_labels.dtype == np.int64
    assert np.bincount(arrays.train_labels, minlength=10).tolist() == [5] * 10
    assert np.bincount(arrays.test_labels, minlength=10).tolist() == [2] * 10
    assert arrays.class_names == CLASS_NAMES


def test_cifar_rows_are_converted_from_channel_major_to_nhwc(tmp_path):
    """Official rows are 1024 R, then 1024 G, then 1024 B values."""
    image = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    image[0, ..., 0], image[0, ..., 1], image[0, ..., 2] = 10, 20, 30
    image[0, 3, 5] = (200, 150, 100)  # one distinctive pixel at row 3, column 5
    folder = tmp_path / "batches"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    for name in BATCH_FILES[1:]:
        (folder / name).write_bytes(cifar_batch(image, [1], name))
    raw = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")[b"data"][0]
    assert raw[:3].tolist() == [10, 10, 10] and raw[1024] == 20  # really channel-major on disk
    arrays = load_cifar10_arrays(folder)
    assert arrays.train_images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(arrays.test_images[0], image[0])
    assert arrays.class_names == ["a", "b"] and arrays.test_labels.tolist() == [1]


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_doctored_batch_cannot_run_code(cifar_batches, tmp_path):
    folder = tmp_path / "batches"
    folder.mkdir()
    for name in BATCH_FILES:
        (folder / name).write_bytes((cifar_batches / name).read_bytes())
    marker = tmp_path / "code-ran"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": _RunsCode(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="forbidden object posix.mkdir|forbidden object os.mkdir"):
        load_cifar10_arrays(folder)
    assert not marker.exists()


def test_labels_outside_the_classes_are_refused(tmp_path):
    folder = tmp_path / "batches"
    folder.mkdir()
    image = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    for name in BATCH_FILES[1:]:
        (folder / name).write_bytes(cifar_batch(image, [2], name))
    with pytest.raises(DataError, match="labels outside 0..1"):
        load_cifar10_arrays(folder)


def test_cifar_preprocess_cache_is_built_once(cifar_batches, tmp_path):
    data = DataConfig(dataset="cifar10", data_dir=str(cifar_batches.parent), cache_dir=str(tmp_path / "cache"))
    first = preprocess(data, image_size=64, source_dir=cifar_batches, progress=False)
    assert first.parent == tmp_path / "cache"
    arrays, direct = load_arrays(first), load_cifar10_arrays(cifar_batches)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(arrays, name), getattr(direct, name))
    assert isinstance(arrays.train_images, np.memmap)  # read lazily, not loaded whole
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    # The same content is found again; the image size does not matter for CIFAR.
    assert preprocess(data, image_size=128, source_dir=cifar_batches, progress=False) == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == mtimes
    assert read_meta(first)["num_train"] == 50
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary folders left


def test_missing_cache_entry_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="missing or incomplete"):
        load_arrays(tmp_path / "nothing-here")


# --- image folders ---------------------------------------------------------------------


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Two classes; images in the modes people actually have on disk."""
    root = tmp_path / "mixed"
    red = np.zeros((24, 24, 3), dtype=np.uint8)
    red[..., 0] = 255
    _save(root / "train" / "apple" / "rgb.png", Image.fromarray(red))
    _save(root / "train" / "apple" / "gray.png", Image.fromarray(np.full((24, 24), 100, np.uint8), "L"))
    rgba = np.zeros((24, 24, 4), dtype=np.uint8)
    rgba[..., 2] = 255  # blue, but fully transparent on the left half
    rgba[:, 12:, 3] = 255
    _save(root / "train" / "apple" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    sixteen = np.full((24, 24), 65535, dtype=np.uint16)
    sixteen[:, 12:] = 32768
    _save(root / "train" / "banana" / "deep.png", Image.fromarray(sixteen))
    _save(root / "train" / "banana" / "photo.jpg", Image.fromarray(np.full((30, 48, 3), 60, np.uint8)))
    _save(root / "test" / "apple" / "a.bmp", Image.fromarray(red))
    _save(root / "test" / "banana" / "b.webp", Image.fromarray(np.full((24, 24, 3), 200, np.uint8)))
    (root / "train" / "banana" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_modes_are_converted_to_rgb(mixed_folder, tmp_path):
    assert Image.open(mixed_folder / "train" / "banana" / "deep.png").mode.startswith("I")  # really 16-bit
    data = DataConfig(dataset="imagefolder", data_dir=str(mixed_folder), cache_dir=str(tmp_path / "cache"),
                      stored_size=16, decode_workers=2)
    arrays = load_arrays(preprocess(data, image_size=64, progress=False))
    assert arrays.class_names == ["apple", "banana"]
    assert arrays.train_images.shape == (5, 16, 16, 3) and arrays.train_images.dtype == np.uint8
    assert arrays.train_labels.tolist() == [0, 0, 0, 1, 1]
    assert arrays.test_images.shape == (2, 16, 16, 3) and arrays.test_labels.tolist() == [0, 1]
    # Files are sorted by name within a class: gray, rgb, rgba; deep, photo.
    gray, rgb, rgba, deep, photo = arrays.train_images
    assert (gray == 100).all()
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()
    # Transparent pixels are white, opaque ones keep their colour.
    np.testing.assert_array_equal(rgba[8, 2], [255, 255, 255])
    np.testing.assert_array_equal(rgba[8, 13], [0, 0, 255])
    # 16-bit values are scaled to 8 bits, not clipped: 65535 -> 255, 32768 -> 128.
    np.testing.assert_array_equal(deep[8, 2], [255, 255, 255])
    np.testing.assert_array_equal(deep[8, 13], [128, 128, 128])
    assert (np.abs(photo.astype(int) - 60) <= 2).all()  # JPEG, centre-cropped to a square


def test_image_folder_cache_follows_content(mixed_folder, tmp_path):
    data = DataConfig(dataset="imagefolder", data_dir=str(mixed_folder), cache_dir=str(tmp_path / "cache"), stored_size=16)
    first = preprocess(data, image_size=64, progress=False)
    mtime = (first / "train_images.npy").stat().st_mtime_ns
    os.utime(mixed_folder / "test" / "apple" / "a.bmp")  # touched, same bytes
    assert preprocess(data, image_size=64, progress=False) == first
    assert (first / "train_images.npy").stat().st_mtime_ns == mtime
    # Changed bytes or another stored size: a new entry.
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(mixed_folder / "test" / "apple" / "a.bmp")
    second = preprocess(data, image_size=64, progress=False)
    assert second != first
    assert (load_arrays(second).test_images[0] == 0).all()
    data = data.model_copy(update={"stored_size": 20})
    assert preprocess(data, image_size=64, progress=False) not in (first, second)


def test_image_folder_stored_size_defaults_to_the_smaller_of_image_and_files(image_folder, tmp_path):
    data = DataConfig(dataset="imagefolder", data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    arrays = load_arrays(preprocess(data, image_size=64, progress=False))
    assert arrays.train_images.shape == (18, 40, 40, 3)  # the fixture's images are 40x40
    assert arrays.class_names == ["cat", "dog", "ship"]
    assert np.bincount(arrays.test_labels).tolist() == [3, 3, 3]
    assert read_meta(preprocess(data, image_size=32, progress=False))["stored_size"] == 32


def test_bad_image_is_listed_or_skipped(image_folder, tmp_path):
    bad = image_folder / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    data = DataConfig(dataset="imagefolder", data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"), stored_size=16)
    with pytest.raises(DataError) as err:
        preprocess(data, image_size=64, progress=False)
    assert str(bad) in str(err.value) and "--skip-bad-images" in str(err.value)
    data = data.model_copy(update={"skip_bad_images": True})
    dataset_dir = preprocess(data, image_size=64, progress=False)
    arrays = load_arrays(dataset_dir)
    assert len(arrays.train_labels) == 18  # the 18 good ones
    assert len(arrays.skipped_files) == 1 and arrays.skipped_files[0].startswith(str(bad))
    # The rows left are exactly the good images, in order, with their labels:
    # the bad one (mid-array, after dog's others) is cut out, not zero-filled.
    good = [(p, label) for label, name in enumerate(("cat", "dog", "ship"))
            for p in sorted((image_folder / "train" / name).glob("0*.png"))]
    assert np.array_equal(arrays.train_images, np.stack([decode_image(p, 16) for p, _ in good]))
    assert arrays.train_labels.tolist() == [label for _, label in good]


def _drop_test_split(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "test")


def _extra_test_class(root: Path) -> None:
    horse = root / "test" / "horse"
    horse.mkdir()
    (horse / "0000.png").write_bytes((root / "test" / "cat" / "0000.png").read_bytes())


def _empty_class(root: Path) -> None:
    for path in (root / "train" / "cat").iterdir():
        path.unlink()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_drop_test_split, "has no test/ folder"),
        (_extra_test_class, r"different classes \(only in train: none; only in test: \['horse'\]\)"),
        (_empty_class, "train/cat has no images"),
    ],
)
def test_image_folder_layout_errors(image_folder, mutate, message):
    mutate(image_folder)
    with pytest.raises(DataError, match=message):
        ImageFolderSource(image_folder)


def test_missing_image_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")


def test_decode_image_centre_crops_to_a_square(tmp_path):
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # only the centre third is white
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3)
    assert out.min() >= 250  # the black sides were cropped away


# --- balanced subsets -----------------------------------------------------------------------


def test_balanced_subset_takes_the_first_of_each_class():
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    chosen = balanced_subset(labels, 6, 3)
    assert chosen.tolist() == [0, 1, 2, 3, 4, 5]
    assert np.bincount(labels[chosen]).tolist() == [2, 2, 2]
    chosen = balanced_subset(labels, 7, 3)  # 7 // 3 = 2 per class, never more for some
    assert np.bincount(labels[chosen]).tolist() == [2, 2, 2]
    assert balanced_subset(labels, 7, 3).tolist() == chosen.tolist()  # deterministic


def test_balanced_subset_with_a_short_class_and_no_limit():
    labels = np.array([0, 0, 0, 0, 1])
    assert balanced_subset(labels, 4, 2).tolist() == [0, 1, 4]  # class 1 has just one
    assert balanced_subset(labels, None, 2).tolist() == [0, 1, 2, 3, 4]
    assert balanced_subset(labels, 100, 2).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="smaller than the number of classes"):
        balanced_subset(labels, 1, 2)


# --- scale: decoding never holds the dataset in memory ------------------------------------


def test_decoding_writes_images_to_disk_not_to_memory(tmp_path):
    """A folder larger than RAM must still preprocess: the arrays go to
    memory-mapped files as they are decoded. 90 images stored at 256x256 are
    18 MB; the Python heap may not grow by anything close to that (a few MB
    of fixed overhead: file-read buffers, thread pools)."""
    import tracemalloc

    folder = make_image_folder(tmp_path / "images", train_per_class=20, test_per_class=10, size=48)
    data = DataConfig(dataset="imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "cache"),
                      stored_size=256, decode_workers=2)
    array_bytes = 90 * 256 * 256 * 3
    # First imports (PIL's plugins, tqdm) allocate too: get them done first.
    warm_up = make_image_folder(tmp_path / "warm-up", train_per_class=1, test_per_class=1)
    preprocess(DataConfig(dataset="imagefolder", data_dir=str(warm_up), cache_dir=str(tmp_path / "cache")),
               image_size=224, progress=False)
    tracemalloc.start()
    try:
        dataset_dir = preprocess(data, image_size=224, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < array_bytes / 4, f"decoding allocated {peak / 1e6:.1f} MB for {array_bytes / 1e6:.1f} MB of images"
    arrays = load_arrays(dataset_dir)
    assert arrays.train_images.shape == (60, 256, 256, 3) and arrays.test_images.shape == (30, 256, 256, 3)
    first_dog = sorted((folder / "train" / "dog").iterdir())[0]
    assert np.array_equal(arrays.train_images[20], decode_image(first_dog, 256))


# Under the Prefect harness, library log lines outside a flow run make Prefect warn.
@pytest.mark.filterwarnings("ignore:Logger 'alexnet_pipeline.cache' attempted to send logs")
def test_a_killed_build_is_cleaned_up_and_one_in_progress_is_not(tmp_path):
    """A preprocessing run killed mid-way leaves a temporary folder as large as
    the dataset; the next build removes it, unless its builder is alive."""
    import subprocess
    import sys

    from alexnet_pipeline.cache import BUILDING_NAME

    cache = tmp_path / "cache"
    dead = cache / ".imagefolder-0123.abc.partial"
    alive = cache / ".imagefolder-4567.def.partial"
    for folder in (dead, alive):
        folder.mkdir(parents=True)
        (folder / "train_images.npy").write_bytes(bytes(1000))
        (folder / BUILDING_NAME).touch()
    # The builder of `dead` died holding the lock (the kernel released it); a
    # live process holds `alive`'s.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(alive / BUILDING_NAME)!r}, 'r+')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        folder = make_image_folder(tmp_path / "images")
        dataset_dir = preprocess(DataConfig(dataset="imagefolder", data_dir=str(folder), cache_dir=str(cache)),
                                 image_size=64, progress=False)
        assert not dead.exists()
        assert (alive / "train_images.npy").is_file()
        assert sorted(p.name for p in cache.iterdir()) == sorted([alive.name, dataset_dir.name])
    finally:
        holder.kill()
        holder.wait()


def test_cache_dir_that_is_a_file_says_so(image_folder, tmp_path):
    in_the_way = tmp_path / "cache"
    in_the_way.write_text("not a folder")
    with pytest.raises(DataError) as err:
        preprocess(DataConfig(dataset="imagefolder", data_dir=str(image_folder), cache_dir=str(in_the_way)),
                   image_size=64, progress=False)
    assert "a file is in the way" in str(err.value) and "disk space" not in str(err.value)
    assert in_the_way.read_text() == "not a folder"


# --- hostile and odd image folders: every error names the file, no traceback ---------


def _file_named(folder: Path, name: bytes) -> Path:
    """A path whose last part is these raw bytes (not necessarily UTF-8)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def test_file_names_that_are_not_utf8_are_hashed_decoded_and_shown_escaped(image_folder, tmp_path):
    """Hashing the folder used to fail on such a name (UnicodeEncodeError),
    before the bad-image handling, even with --skip-bad-images."""
    cafe = _file_named(image_folder / "train" / "cat", b"caf\xe9.png")  # Latin-1, as old cameras wrote
    os.rename(image_folder / "train" / "cat" / "0000.png", cafe)
    broken = _file_named(image_folder / "train" / "dog", b"\xff\xfe.png")
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    data = DataConfig(dataset="imagefolder", data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"),
                      stored_size=16)
    with pytest.raises(DataError) as err:
        preprocess(data, image_size=64, progress=False)
    message = str(err.value)
    message.encode("utf-8")  # printable and loggable as it is
    shown = f"{image_folder}/train/dog/\\xff\\xfe.png"
    assert f"{shown} (UnidentifiedImageError: cannot identify image file '{shown}')" in message
    assert "caf" not in message and "\\udc" not in message
    data = data.model_copy(update={"skip_bad_images": True})
    arrays = load_arrays(preprocess(data, image_size=64, progress=False))
    assert len(arrays.train_labels) == 18  # café.png decoded like any other
    assert [s.split(" (")[0] for s in arrays.skipped_files] == [f"{image_folder}/train/dog/\\xff\\xfe.png"]


def test_a_class_folder_name_that_is_not_utf8_is_refused(image_folder):
    for split in ("train", "test"):
        os.rename(image_folder / split / "dog", _file_named(image_folder / split, b"d\xf6g"))
    with pytest.raises(DataError, match=r"class folder .*/train/d\\xf6g: its name is not valid UTF-8.*rename"):
        ImageFolderSource(image_folder)


_PREPROCESS_IN_A_CHILD = """
import json, sys
from alexnet_pipeline.cache import load_arrays, preprocess
from alexnet_pipeline.config import DataConfig
from alexnet_pipeline.errors import DataError
results = []
for skip in (False, True):
    data = DataConfig(dataset="imagefolder", data_dir=sys.argv[1], cache_dir=sys.argv[2], stored_size=16,
                      skip_bad_images=skip)
    try:
        arrays = load_arrays(preprocess(data, image_size=64, progress=False))
        results.append({"train": len(arrays.train_labels), "skipped": arrays.skipped_files})
    except DataError as exc:
        results.append({"error": str(exc)})
print(json.dumps(results))
"""


def test_an_unreadable_image_is_a_bad_image_not_a_traceback(image_folder, tmp_path):
    """A real permission error (capabilities dropped, see conftest): it used
    to end in a traceback while hashing the folder, even with --skip-bad-images."""
    locked = image_folder / "train" / "dog" / "0002.png"
    locked.chmod(0)
    proc = run_python_with_permissions_enforced(_PREPROCESS_IN_A_CHILD, str(image_folder), str(tmp_path / "cache"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    refused, skipped = json.loads(proc.stdout)
    assert refused["error"].startswith(f"1 image file(s) in {image_folder} could not be decoded:\n  {locked} "
                                       "(cannot read it: Permission denied; check its permissions)")
    assert "--skip-bad-images" in refused["error"]
    assert skipped["train"] == 17 and skipped["skipped"] == [
        f"{locked} (cannot read it: Permission denied; check its permissions)"]


def test_an_unreadable_folder_inside_a_class_is_reported_not_skipped(image_folder):
    """rglob skipped a folder it could not list without a word: its images
    silently went missing from the dataset."""
    hidden = image_folder / "train" / "dog" / "more"
    hidden.mkdir()
    os.rename(image_folder / "train" / "dog" / "0001.png", hidden / "0001.png")
    hidden.chmod(0)
    code = ("import sys\nfrom pathlib import Path\nfrom alexnet_pipeline.data import ImageFolderSource\n"
            "from alexnet_pipeline.errors import DataError\n"
            "try:\n    ImageFolderSource(Path(sys.argv[1]))\nexcept DataError as exc:\n    print(exc)\n")
    try:
        proc = run_python_with_permissions_enforced(code, str(image_folder))
    finally:
        hidden.chmod(0o755)  # so that pytest can delete it
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"cannot read the folder {hidden} (Permission denied); check its permissions"


def test_an_image_that_would_inflate_past_the_pixel_limit_is_a_bad_image(tmp_path, monkeypatch):
    """PIL refuses more than twice MAX_IMAGE_PIXELS but between once and
    twice only warns: that image is now a bad image too, not gigabytes of
    memory per decoding thread. (The limit is lowered here so that a 40x40
    file is such an image.)"""
    folder = make_image_folder(tmp_path / "images", size=20)
    big = folder / "train" / "cat" / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = DataConfig(dataset="imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "cache"), stored_size=16)
    with pytest.raises(DataError, match=rf"{big} \(ValueError: 40x40 pixels is more than the 1,000 decoded here\)"):
        preprocess(data, image_size=64, progress=False)
    data = data.model_copy(update={"skip_bad_images": True})
    assert len(load_arrays(preprocess(data, image_size=64, progress=False)).train_labels) == 18


# --- what the cache is keyed by ----------------------------------------------------------


def _replace_keeping_size_and_times(target: Path, replacement: Path) -> None:
    """Overwrite `target` with `replacement`'s bytes (same length) and set its
    access and modification times back: the only trace left is ctime."""
    before = target.stat()
    assert replacement.stat().st_size == before.st_size and replacement.read_bytes() != target.read_bytes()
    # ctime ticks with the kernel's clock (a few ms): make sure one tick has
    # passed since the file was written, so the test never depends on speed.
    while time.time_ns() < before.st_ctime_ns + 50_000_000:
        time.sleep(0.01)
    target.write_bytes(replacement.read_bytes())
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_an_image_replaced_with_its_size_and_mtime_kept_is_not_a_cache_hit(tmp_path):
    """Same size, mtime restored: Prefect's cache key (SourceFiles) used to be
    equal, so the old preprocessed data were reused. Now the key includes
    ctime and the inode, and the library's entry is keyed by content."""
    from tasks.caching import SourceFiles

    folder = make_image_folder(tmp_path / "images", ext=".bmp")  # uncompressed: equal sizes
    policy = SourceFiles(params=("image_folder",), subfolders=("train", "test"))

    def prefect_key() -> str:
        return policy.compute_key(None, {"image_folder": str(folder)}, {})

    data = DataConfig(dataset="imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "cache"), stored_size=16)
    key, first = prefect_key(), preprocess(data, image_size=64, progress=False)
    assert prefect_key() == key  # nothing changed: the same key, no file read for it
    target = folder / "test" / "cat" / "0000.bmp"
    _replace_keeping_size_and_times(target, folder / "test" / "dog" / "0000.bmp")
    assert prefect_key() != key
    second = preprocess(data, image_size=64, progress=False)
    assert second != first
    assert np.array_equal(load_arrays(second).test_images[0], decode_image(folder / "test" / "dog" / "0000.bmp", 16))
    assert read_meta(second)["source_fingerprint"] != read_meta(first)["source_fingerprint"]


def test_the_prefect_key_copes_with_odd_names_and_unreadable_files(image_folder):
    """It used to raise on a name that is not UTF-8 (Prefect then logs a
    traceback and caches nothing)."""
    from tasks.caching import SourceFiles

    policy = SourceFiles(params=("image_folder",), subfolders=("train", "test"))
    _file_named(image_folder / "train" / "cat", b"\xff.png").write_bytes(b"x")
    (image_folder / "train" / "cat" / "0001.png").chmod(0)  # stat() needs no read permission
    key = policy.compute_key(None, {"image_folder": str(image_folder)}, {})
    assert key == policy.compute_key(None, {"image_folder": str(image_folder)}, {})
