"""classify without Spark: model specs, preprocessing, channel order, weights, labels, flags, errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workloads.classify import main as classify
from workloads.jobs import JOBS
from kindling import UserError
from workloads.classify.image_models import (MODEL_SPECS, build_model, decoded_rgb,
                                             default_weights, imagenet_labels, model_spec,
                                             resized_rgb, saved_weights, weights_source)

MOBILENET = "models/mobilenet_v1_0.25_224.h5"
LABELS = "models/imagenet_labels_1001.txt"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds Keras models: TensorFlow
def test_spec_table_has_sparkdl_models_plus_mobilenets_with_their_input_sizes():
    sizes = {name: (spec.input_size, spec.feature_size) for name, spec in MODEL_SPECS.items()}
    assert sizes == {"InceptionV3": (299, 2048), "Xception": (299, 2048), "ResNet50": (224, 2048),
                     "VGG16": (224, 512), "VGG19": (224, 512), "MobileNet": (224, 1024),
                     "MobileNetV2": (224, 1280)}
    import keras

    for spec in MODEL_SPECS.values():
        assert callable(getattr(keras.applications, spec.name))


@pytest.mark.parametrize("name", ["VGG16", "VGG19", "ResNet50"])
def test_caffe_family_swaps_to_bgr_and_subtracts_the_imagenet_mean(name):
    red = np.array([[[255, 0, 0]]], dtype=np.float32)
    out = model_spec(name).preprocess(red)
    np.testing.assert_allclose(out[0, 0], [0 - 103.939, 0 - 116.779, 255 - 123.68], atol=1e-3)
    assert red[0, 0].tolist() == [255, 0, 0], "preprocess_input must not scale the caller's array"


@pytest.mark.parametrize("name", ["InceptionV3", "Xception", "MobileNet", "MobileNetV2"])
def test_tf_family_scales_rgb_to_minus_one_one(name):
    red = np.array([[[255, 0, 128]]], dtype=np.float32)
    np.testing.assert_allclose(model_spec(name).preprocess(red)[0, 0], [1, -1, 128 / 127.5 - 1], atol=1e-6)
    assert red[0, 0].tolist() == [255, 0, 128]


def test_image_source_bgr_becomes_rgb():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    bgr = rgb[:, :, ::-1].tobytes()
    assert resized_rgb(bgr, 2, 2, 3, 2).tolist() == rgb.tolist()


def test_image_source_bgra_drops_alpha_without_compositing():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    alpha = np.array([[[0], [64]], [[128], [255]]], dtype=np.uint8)
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], axis=2).tobytes()
    assert resized_rgb(bgra, 2, 2, 4, 2).tolist() == rgb.tolist()


def test_image_source_grayscale_becomes_three_equal_channels():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    out = resized_rgb(gray.tobytes(), 4, 4, 1, 2)
    expected = np.asarray(Image.fromarray(gray).convert("RGB").resize((2, 2), Image.Resampling.BILINEAR))
    assert out.shape == (2, 2, 3) and out.tolist() == expected.tolist()


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UserError, match="unknown model 'InceptionV4'; choose one of: InceptionV3, "
                                        "Xception, ResNet50, VGG16, VGG19, MobileNet, MobileNetV2"):
        model_spec("InceptionV4")


def test_weights_must_be_imagenet_or_an_existing_keras_file(assets, tmp_path):
    assert weights_source("imagenet") == "imagenet"
    assert weights_source(str(assets / MOBILENET)) == str((assets / MOBILENET).resolve())
    with pytest.raises(UserError, match="random weights would differ on every Spark worker"):
        weights_source(None)
    with pytest.raises(UserError, match="weights file not found: .*nope.h5"):
        weights_source(str(tmp_path / "nope.h5"))
    with pytest.raises(UserError, match="is not a Keras .h5/.keras file"):
        weights_source(str(assets / LABELS))


@pytest.mark.slow  # builds Keras models: TensorFlow
def test_mobilenet_file_loads_with_its_alpha_as_keras_by_name_loads_it(assets):
    import keras

    path = str(assets / MOBILENET)
    assert model_spec("MobileNet").width_argument(saved_weights(path), path) == {"alpha": 0.25}
    model = build_model(model_spec("MobileNet"), path, include_top=False)
    assert model.output_shape == (None, 256)
    reference = keras.applications.MobileNet(alpha=0.25, include_top=False, pooling="avg",
                                             weights=None, input_shape=(224, 224, 3))
    reference.load_weights(path, by_name=True)  # Keras' own legacy by-name loader
    for ours, theirs in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside Keras' save()
@pytest.mark.slow  # builds Keras models: TensorFlow
def test_auto_named_layers_load_in_order_from_a_file_saved_in_another_process_state(tmp_path):
    """InceptionV3's unnamed layers get per-process counters (conv2d_94...), so names can't match."""
    import keras

    source = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg")
    source.save(tmp_path / "inception.h5")
    model = build_model(model_spec("InceptionV3"), str(tmp_path / "inception.h5"), include_top=False)
    assert {w.path for w in model.weights}.isdisjoint(w.path for w in source.weights)
    for ours, theirs in zip(model.weights, source.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside Keras' save()
@pytest.mark.slow  # builds Keras models: TensorFlow
def test_keras_v3_file_loads_like_the_legacy_h5(assets, tmp_path):
    legacy = build_model(model_spec("MobileNet"), str(assets / MOBILENET), include_top=True)
    legacy.save(tmp_path / "mobilenet.keras")
    model = build_model(model_spec("MobileNet"), str(tmp_path / "mobilenet.keras"), include_top=False)
    assert model.output_shape == (None, 256)
    for ours, theirs in zip(model.weights, legacy.weights):  # the head comes last; zip stops before
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.slow  # builds Keras models: TensorFlow
def test_weights_of_another_architecture_are_refused(assets):
    path = str(assets / MOBILENET)
    with pytest.raises(UserError, match="has no layer block_16_project, so it is not a MobileNetV2"):
        build_model(model_spec("MobileNetV2"), path, include_top=False)
    with pytest.raises(UserError, match=r"does not fit vgg16: its layer #1 \(conv1\) has shapes "
                                        r"\[\(3, 3, 3, 8\)\], the model's \(block1_conv1\) needs "
                                        r"\[\(3, 3, 3, 64\), \(64,\)\]"):
        build_model(model_spec("VGG16"), path, include_top=False)


def test_labels_file_skips_background_and_keeps_keras_order(assets, tmp_path):
    labels = imagenet_labels(str(assets / LABELS))
    assert len(labels) == 1000
    assert labels[0] == ("0", "tench, Tinca tinca")
    assert labels[779] == ("779", "school bus")
    short = tmp_path / "labels.txt"
    short.write_text("background\ncat\ndog\n")
    with pytest.raises(UserError, match="has 3 lines; it needs the 1000 ImageNet classes"):
        imagenet_labels(str(short))


def test_labels_follow_sorted_class_folders(tmp_path):
    for name in ("cars", "buses", ".cache"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a class")
    assert [p.name for p in classify.class_folders(str(tmp_path))] == ["buses", "cars"]


def test_class_folder_errors(tmp_path):
    with pytest.raises(UserError, match="data folder not found: .*missing"):
        classify.class_folders(str(tmp_path / "missing"))
    (tmp_path / "buses").mkdir()
    with pytest.raises(UserError, match="has 1 class subfolder\\(s\\); it needs at least 2"):
        classify.class_folders(str(tmp_path))
    (tmp_path / "buses" / "1.jpg").write_bytes(b"")
    (tmp_path / "cars").mkdir()
    with pytest.raises(UserError, match="class folder\\(s\\) cars in .* hold no files"):
        classify.class_folders(str(tmp_path))


def test_held_out_share_is_exact_seeded_and_differs_per_class():
    test = classify.held_out_ranks(48, 0.4, seed=42, label=0)
    assert len(test) == 19 and set(test) <= set(range(48)) and test == sorted(test)
    assert classify.held_out_ranks(48, 0.4, seed=7, label=0) != test
    assert classify.held_out_ranks(48, 0.4, seed=42, label=1) != test
    assert len(classify.held_out_ranks(41, 0.4, seed=42, label=1)) == 16
    assert classify.held_out_ranks(1, 0.4, seed=42, label=0) == []


@pytest.mark.parametrize(("count", "seed", "label"), [(48, 42, 0), (41, 42, 1), (2000, 7, 1)])
def test_held_out_ranks_pick_the_paths_the_earlier_path_draw_picked(count, seed, label):
    """The hold-out sets stay those of the job's earlier draw over the sorted paths themselves."""
    paths = [f"file:/d/buses/{i:05d}.jpg" for i in np.random.default_rng(count).permutation(count)]
    ordered = sorted(paths)
    size = min(count - 1, max(1, round(count * 0.4)))
    earlier = sorted(np.random.default_rng([seed, label]).choice(ordered, size=size, replace=False))
    assert [ordered[rank] for rank in classify.held_out_ranks(count, 0.4, seed, label)] == earlier


def jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    """A JPEG of a smooth gradient (so that scaled decodes stay close to full ones)."""
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90).resize(size),
                                Image.new("L", size, 90))) if mode == "RGB" else gradient
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("size", [224, 299])
def test_draft_decode_gives_the_model_input_size_from_a_reduced_decode(size):
    data = jpeg((3648, 2736))
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        assert image.size == (456, 342)  # a 1/8 DCT decode, still >= size on both sides
    pixels = decoded_rgb(data, size)
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size),
                                                                         Image.Resampling.BILINEAR))
    assert np.abs(pixels.astype(int) - full).mean() < 2


def test_small_gray_and_alpha_files_decode_to_rgb_of_the_input_size(tmp_path):
    assert decoded_rgb(jpeg((84, 60), "L"), 224).shape == (224, 224, 3)
    rgba = Image.new("RGBA", (300, 200), (10, 200, 30, 0))
    out = io.BytesIO()
    rgba.save(out, format="PNG")
    pixels = decoded_rgb(out.getvalue(), 224)
    assert pixels.shape == (224, 224, 3) and pixels[0, 0].tolist() == [10, 200, 30]


@pytest.mark.parametrize("data", [b"\xff\xd8 not a jpeg", b"GIF89a truncated", b"", b"plain text\n",
                                  jpeg((640, 480))[:2000]])
def test_undecodable_bytes_give_none(data):
    assert decoded_rgb(data, 224) is None


def test_model_outputs_batch_the_decoded_images_and_leave_the_others_null():
    from workloads.classify.deep_image import BATCH_SIZE, model_outputs

    class Sums:
        """A model whose output is each image's pixel sum: shows which image went where."""
        def __init__(self):
            self.calls: list[int] = []

        def predict_on_batch(self, batch):
            self.calls.append(len(batch))
            return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)

    images = [None if i % 3 == 0 else np.full((2, 2, 3), i, dtype=np.uint8) for i in range(80)]
    spec = model_spec("MobileNet")
    model = Sums()
    outputs = model_outputs(model, spec, images)
    assert len(outputs) == 80 and model.calls == [BATCH_SIZE, 53 - BATCH_SIZE]  # 27 are None
    for image, output in zip(images, outputs):
        if image is None:
            assert output is None
        else:
            assert output == pytest.approx([spec.preprocess(image).sum()], rel=1e-6)


def test_offline_defaults_fill_data_model_and_weights(assets, monkeypatch):
    monkeypatch.setenv("KINDLING_ASSETS", str(assets))
    args = classify.parse_args([])
    assert (args.data, args.model, args.weights) == (
        str(assets / "datasets/buses-cars"), "MobileNet", str(assets / MOBILENET))
    assert (args.test_fraction, args.max_iter) == (0.4, 30)
    assert JOBS["classify"].with_offline_defaults(["--data", "/elsewhere"])[:2] == ["--data", "/elsewhere"]


def test_transformers_given_no_weights_take_the_offline_copy_under_kindling_assets(
        assets, tmp_path, monkeypatch):
    """Code that names only a model (the chapter's InceptionV3) runs offline when
    $KINDLING_ASSETS holds that model's file; without the variable, Keras downloads ImageNet's."""
    monkeypatch.delenv("KINDLING_ASSETS", raising=False)
    assert default_weights(model_spec("InceptionV3")) == "imagenet"
    monkeypatch.setenv("KINDLING_ASSETS", str(assets))
    assert default_weights(model_spec("MobileNet")) == str(assets / MOBILENET)
    with pytest.raises(UserError, match=rf"^KINDLING_ASSETS={assets} has no models/InceptionV3.h5; "):
        default_weights(model_spec("InceptionV3"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "InceptionV3.h5").write_bytes(b"")
    monkeypatch.setenv("KINDLING_ASSETS", str(tmp_path))
    assert default_weights(model_spec("InceptionV3")) == str(tmp_path / "models/InceptionV3.h5")


def run_classify(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workloads.classify", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("flags", "message"), [
    (["--model", "AlexNet"], "error: unknown model 'AlexNet'; choose one of: InceptionV3, Xception, "
                             "ResNet50, VGG16, VGG19, MobileNet, MobileNetV2"),
    (["--data", "/no/such/images"], "error: data folder not found: /no/such/images; pass --data "
                                    "DIR with one subfolder of images per class"),
])
def test_cli_user_errors_are_one_line_and_exit_2(flags, message):
    result = run_classify(*flags)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
