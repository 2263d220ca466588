"""Train the compact single-shot `shapes` detector and save models/detector.keras.

Input  `image`: (N, 128, 128, 3) float32 RGB scaled to [0, 1].
Output `grid` : (N, 8, 8, 5 + C) raw logits, stride 16 (layout in decode.py).

The train split is generated in memory (never written to the repo); the
committed validation split (data/shapes/val) is used for the final COCO mAP.

Usage (from the repo root):
    python examples/shapes/train.py
"""

from __future__ import annotations

import os

# tfmot needs Keras 2 models; this must be set before TensorFlow is imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from coco_eval import coco_map
from generate import CLASSES, IMAGE_SIZE, jpeg_roundtrip, make_sample

REPO_ROOT = Path(__file__).resolve().parents[2]
GRID = 8
STRIDE = IMAGE_SIZE // GRID
NUM_CLASSES = len(CLASSES)
BOX_WEIGHT = 5.0  # box terms are small BCEs on soft targets; upweight to balance


# --------------------------------------------------------------------- model
def conv_bn(x: tf.Tensor, filters: int, name: str, kernel: int = 3, strides: int = 1) -> tf.Tensor:
    x = keras.layers.Conv2D(
        filters, kernel, strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    # ReLU6 keeps activations bounded, which int8 quantization likes.
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def separable_block(x: tf.Tensor, name: str) -> tf.Tensor:
    """Depthwise 3x3 + pointwise 1x1 with a residual connection."""
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(y)
    y = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = conv_bn(y, x.shape[-1], f"{name}_pw", kernel=1)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def build_model(num_classes: int = NUM_CLASSES) -> keras.Model:
    image = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = conv_bn(image, 16, "stem", strides=2)  # 64x64
    x = conv_bn(x, 32, "down1", strides=2)  # 32x32
    x = separable_block(x, "block1")
    x = conv_bn(x, 64, "down2", strides=2)  # 16x16
    x = separable_block(x, "block2")
    x = conv_bn(x, 128, "down3", strides=2)  # 8x8
    x = separable_block(x, "block3")
    x = separable_block(x, "block4")
    x = conv_bn(x, 128, "head")
    grid = keras.layers.Conv2D(5 + num_classes, 1, name="grid")(x)
    return keras.Model(image, grid, name="shapes_detector")


# ---------------------------------------------------------------------- data
def encode_targets(boxes: list[tuple[float, ...]], category_ids: list[int]) -> np.ndarray:
    """Grid target: objectness, centre offsets, w/h fractions, one-hot class."""
    target = np.zeros((GRID, GRID, 5 + NUM_CLASSES), np.float32)
    for (x, y, w, h), category_id in zip(boxes, category_ids, strict=True):
        cx, cy = (x + w / 2) / STRIDE, (y + h / 2) / STRIDE
        col, row = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
        target[row, col, :5] = (1.0, cx - col, cy - row, w / IMAGE_SIZE, h / IMAGE_SIZE)
        target[row, col, 4 + category_id] = 1.0
    return target


def make_train_set(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    targets = np.empty((count, GRID, GRID, 5 + NUM_CLASSES), np.float32)
    for i in range(count):
        sample = make_sample(seed, "train", i)
        images[i] = jpeg_roundtrip(sample.image)  # same JPEG artefacts as the committed splits
        targets[i] = encode_targets(sample.boxes, sample.category_ids)
    return images, targets


def augment(image: tf.Tensor, target: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flips and transpose (the 8 symmetries of the square), applied to labels too.

    Offsets of negative cells are masked out of the loss, so flipping them is harmless.
    """
    coins = tf.random.stateless_uniform((3,), seed=seed) < 0.5
    image = tf.cast(image, tf.float32) / 255.0

    def flip_x(i: tf.Tensor, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        t = t[:, ::-1]
        return i[:, ::-1], tf.concat([t[..., :1], 1.0 - t[..., 1:2], t[..., 2:]], -1)

    def flip_y(i: tf.Tensor, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        t = t[::-1]
        return i[::-1], tf.concat([t[..., :2], 1.0 - t[..., 2:3], t[..., 3:]], -1)

    def transpose(i: tf.Tensor, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        t = tf.transpose(t, (1, 0, 2))
        swapped = tf.gather(t, [0, 2, 1, 4, 3] + list(range(5, 5 + NUM_CLASSES)), axis=-1)
        return tf.transpose(i, (1, 0, 2)), swapped

    for coin, fn in zip(tf.unstack(coins), (flip_x, flip_y, transpose), strict=True):
        flipped = fn(image, target)  # cheap views; tf.where keeps the graph branch-free
        image = tf.where(coin, flipped[0], image)
        target = tf.where(coin, flipped[1], target)
    return image, target


def make_dataset(
    images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int
) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((images, targets))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    # A seeded random stream gives each example its own stateless augmentation seed.
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    data = tf.data.Dataset.zip((data, seeds)).map(
        lambda xy, s: augment(xy[0], xy[1], s),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------- loss
def detection_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Objectness BCE on all cells; box BCE (soft targets) and class CE on positive cells.

    Everything is normalised by the number of objects in the batch, so images with
    many objects do not dominate and the balance between terms is size-independent.
    """
    positive = y_true[..., 0]
    num_pos = tf.maximum(tf.reduce_sum(positive), 1.0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits
    obj = tf.reduce_sum(bce(labels=positive, logits=y_pred[..., 0]))
    box = tf.reduce_sum(positive[..., None] * bce(labels=y_true[..., 1:5], logits=y_pred[..., 1:5]))
    cls = tf.reduce_sum(
        positive
        * tf.nn.softmax_cross_entropy_with_logits(labels=y_true[..., 5:], logits=y_pred[..., 5:])
    )
    return (obj + BOX_WEIGHT * box + cls) / num_pos


# ---------------------------------------------------------------------- save
def save_reproducibly(model: keras.Model, path: Path) -> None:
    """model.save(), then drop the save date and zip timestamps from the archive.

    Same seeds give the same weights, and this makes the file byte-identical too,
    so content-addressed caches (edgebuild's) see no change after a retrain.
    """
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":  # never read back by load_model
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            archive.writestr(fixed, data)


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (as generate.py)")
    parser.add_argument("--train-seed", type=int, default=0, help="weights/shuffle seed")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "shapes")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "detector.keras")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.train_seed)
    tf.config.experimental.enable_op_determinism()

    start = time.perf_counter()
    images, targets = make_train_set(args.seed, args.train_images)
    print(f"generated {len(images)} train images in {time.perf_counter() - start:.1f}s")

    model = build_model()
    steps = args.epochs * (len(images) // args.batch_size)
    warmup = min(200, steps // 10)  # short warmup: BN statistics are wild in the first steps
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - warmup, warmup_target=args.lr, warmup_steps=warmup
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=detection_loss)
    print(f"params: {model.count_params():,}")
    fit_start = time.perf_counter()
    model.fit(
        make_dataset(images, targets, args.batch_size, args.train_seed),
        epochs=args.epochs,
        verbose=2,
    )
    print(
        f"training (fit) took {time.perf_counter() - fit_start:.1f}s, "
        f"total so far {time.perf_counter() - start:.1f}s"
    )

    # Save an uncompiled view of the same layers: it loads without custom objects.
    export = keras.Model(model.input, model.output, name=model.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_reproducibly(export, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")

    metrics = coco_map(
        lambda x: export.predict(x, verbose=0),
        args.data / "val.json",
        args.data / "val",
        verbose=True,
    )
    print(f"val mAP@0.5 = {metrics['map50']:.3f}  mAP@0.5:0.95 = {metrics['map50_95']:.3f}")
    print(f"wall-clock total: {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
