"""Fuzzing the loaders: hundreds of random or corrupted NIfTI headers, .npy/.npz files, DICOM tags, safetensors
headers, checkpoints and YAML configs. Each input either loads correctly or gives one PrditError whose message is
one line naming the file (what the CLI prints as ``prdit: error: ...``): never another exception (a traceback),
never a hang.
"""

import gzip
import json
import signal
import struct
import traceback
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_factory import ramp_volume, write_series

from prdit.checkpoint import CheckpointMeta, export_weights, load_checkpoint, save_checkpoint
from prdit.config import load_config
from prdit.data.preprocess import PreprocessOptions, preprocess_lidc
from prdit.data.rad_chestct import read_rad_volume
from prdit.errors import PrditError
from prdit.io import load_volume
from prdit.sample import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
SECONDS_PER_INPUT = 20  # generous for 2 loaded cores; a hang is minutes


@contextmanager
def deadline(seconds: int):
    def expire(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Verdicts:
    """Runs a loader on each input; keeps what went wrong (another exception, a multi-line message, a hang)."""

    def __init__(self) -> None:
        self.loaded, self.refused, self.failures = 0, 0, []

    def check(self, name: str, loader, *args) -> None:
        try:
            with deadline(SECONDS_PER_INPUT):
                loader(*args)
            self.loaded += 1
        except PrditError as error:
            message = str(error)
            if not message or "\n" in message:
                self.failures.append(f"{name}: message is not one line: {message!r}")
            self.refused += 1
        except Exception:  # noqa: BLE001 - exactly what must never reach a user
            self.failures.append(f"{name}:\n{traceback.format_exc(limit=-3)}")

    def assert_clean(self, at_least: int) -> None:
        assert not self.failures, "\n\n".join(self.failures)
        assert self.loaded + self.refused >= at_least and self.refused > 0


def flip_bytes(data: bytes, rng, count: int, start: int = 0, stop: int | None = None) -> bytes:
    buffer = bytearray(data)
    stop = len(buffer) if stop is None else min(stop, len(buffer))
    for offset in rng.integers(start, stop, count):
        buffer[offset] = int(rng.integers(0, 256))
    return bytes(buffer)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------------------


def test_nifti_headers_and_bytes(tmp_path):
    """60 NIfTI files: header fields set to odd values, random bytes in the header, truncations, gzip damage."""
    rng = np.random.default_rng(1)
    image = nib.Nifti1Image(rng.normal(0, 100, (6, 7, 8)).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    good = image.to_bytes()
    verdicts = Verdicts()
    verdicts.check("intact", load_volume, write(tmp_path / "intact.nii", good))
    assert verdicts.loaded == 1
    fields = {"dim": [(3, 6, 7, 8, 1, 1, 1, 1), (3, 0, 7, 8, 1, 1, 1, 1), (7, 6, 7, 8, 2, 2, 2, 2), (3, -6, 7, 8, 1, 1, 1, 1),
                      (3, 32767, 32767, 32767, 1, 1, 1, 1), (2, 6, 7, 1, 1, 1, 1, 1), (1, 48, 1, 1, 1, 1, 1, 1)],
              "datatype": [0, 1, 32, 128, 2304, 1792, 9999], "bitpix": [0, 7, 64],
              "pixdim": [(1, 0, 0, 0, 1, 1, 1, 1), (1, -1, np.nan, np.inf, 1, 1, 1, 1), (1, 1e30, 1e-30, 1, 1, 1, 1, 1)],
              "vox_offset": [0, 1e9, 347, -352], "scl_slope": [np.nan, np.inf, 0, -1e30], "scl_inter": [np.nan, 1e38],
              "qform_code": [0, 99], "sform_code": [0, -4], "srow_x": [(np.nan,) * 4, (0, 0, 0, 0)],
              "quatern_b": [2.0, np.nan], "magic": [b"ni1\0", b"xxxx"], "sizeof_hdr": [0, 540]}
    case = 0
    for field, values in fields.items():
        for value in values:
            header = image.header.copy()
            raw = header.binaryblock
            structured = np.frombuffer(raw, dtype=header.template_dtype).copy()
            structured[field] = value
            data = structured.tobytes() + good[348:]
            verdicts.check(f"{field}={value}", load_volume, write(tmp_path / f"field{case}.nii", data))
            case += 1
    for i in range(15):
        data = flip_bytes(good, rng, int(rng.integers(1, 12)), stop=352)
        verdicts.check(f"header bytes {i}", load_volume, write(tmp_path / f"flip{i}.nii", data))
    for i, keep in enumerate(rng.uniform(0, 1, 8)):
        verdicts.check(f"truncated {keep:.2f}", load_volume, write(tmp_path / f"cut{i}.nii.gz", gzip.compress(good)[: int(len(good) * keep)]))
    for i in range(5):
        data = flip_bytes(gzip.compress(good), rng, 4, start=10)
        verdicts.check(f"gzip bytes {i}", load_volume, write(tmp_path / f"gz{i}.nii.gz", data))
    verdicts.assert_clean(at_least=60)


def test_npy_and_npz_keys_and_values(tmp_path):
    """45 .npy/.npz files: wrong keys, pickled objects, odd dtypes and shapes, bad spacing entries, damaged zips."""
    rng = np.random.default_rng(2)
    volume = rng.normal(-500, 200, (8, 9, 10)).astype(np.float32)
    contents = [
        {"ct": volume}, {"volume": volume, "spacing": np.array([1.0, 0.7, 0.7])}, {"other": volume, "more": volume},
        {}, {"ct": volume.astype(np.complex64)}, {"ct": volume > 0}, {"ct": np.array(["a", "b"])}, {"ct": volume[0]},
        {"ct": volume[None, None]}, {"ct": volume[:, :, :1]}, {"ct": np.zeros((0, 4, 4))}, {"ct": np.array(3.0)},
        {"ct": volume, "spacing": np.array(["x", "y", "z"])}, {"ct": volume, "spacing": np.array([1.0])},
        {"ct": volume, "spacing": np.array([0.0, -1.0, np.nan])}, {"ct": volume, "spacing": np.array([])},
        {"ct": np.full((4, 4, 4), np.nan, np.float32)}, {"ct": volume.astype(np.float16)}, {"ct": volume.astype(np.uint64)},
        {"ct": np.array([object()], dtype=object)}, {"ct": volume, "spacing": np.ones((3, 3))},
    ]
    verdicts = Verdicts()
    for i, content in enumerate(contents):
        path = tmp_path / f"case{i}.npz"
        np.savez(path, **content, allow_pickle=True) if content.get("ct", np.zeros(1)).dtype == object else np.savez(path, **content)
        verdicts.check(f"npz {list(content)} {i}", load_volume, path)
        verdicts.check(f"rad npz {i}", read_rad_volume, path)
    good = (tmp_path / "case0.npz").read_bytes()
    for i in range(6):
        data = flip_bytes(good, rng, 6) if i % 2 else good[: int(len(good) * rng.uniform(0, 1))]
        verdicts.check(f"damaged npz {i}", load_volume, write(tmp_path / f"damaged{i}.npz", data))
    np.save(tmp_path / "plain.npy", volume)
    npy = (tmp_path / "plain.npy").read_bytes()
    for i in range(6):
        data = flip_bytes(npy, rng, 4, stop=128) if i % 2 else npy[: int(len(npy) * rng.uniform(0, 1))]
        verdicts.check(f"damaged npy {i}", load_volume, write(tmp_path / f"damaged{i}.npy", data))
    verdicts.assert_clean(at_least=45)


def test_dicom_tags_and_bytes(tmp_path):
    """40 DICOM series of 4 slices with odd tag values or damaged bytes, through the whole `prdit data lidc` path."""
    import pydicom

    rng = np.random.default_rng(3)
    hu, origin = ramp_volume((4, 8, 8), spacing=(2.0, 1.0, 1.0))
    values = {
        "Rows": [0, 1, 65535], "Columns": [0, 3], "PixelSpacing": [[0, 0], [-1, 1], [1], ["nan", "1"]],
        "ImagePositionPatient": [[0, 0], ["nan", 0, 0], [1e308, 0, 0]], "ImageOrientationPatient": [[0] * 6, [1, 0, 0]],
        "RescaleSlope": [0, "nan", 1e300], "RescaleIntercept": ["inf"], "BitsAllocated": [7, 32], "SliceThickness": [-1],
        "PixelRepresentation": [2], "SamplesPerPixel": [3], "Modality": ["MR", ""], "SeriesInstanceUID": [""],
        "PhotometricInterpretation": ["RGB"], "PixelData": [b"", b"\x00" * 7],
    }
    options = PreprocessOptions(size=8, spacing=2.0, min_slices=2)
    verdicts = Verdicts()
    case = 0

    def run(name: str, src: Path) -> None:
        nonlocal case
        verdicts.check(name, preprocess_lidc, src, tmp_path / "out" / str(case), options, 1, False, False)
        case += 1

    src = tmp_path / "intact"
    write_series(src, hu, spacing=(2.0, 1.0, 1.0), origin=origin)
    run("intact", src)
    assert verdicts.loaded == 1
    for tag, choices in values.items():
        for value in choices:
            src = tmp_path / f"tag{case}"
            _, paths = write_series(src, hu, spacing=(2.0, 1.0, 1.0), origin=origin)
            for path in paths[: int(rng.integers(1, len(paths) + 1))]:
                ds = pydicom.dcmread(path)
                with_value = ds
                try:
                    setattr(with_value, tag, value)
                    ds.save_as(path)
                except Exception:  # noqa: BLE001 - pydicom refuses to write some values: write the raw element
                    ds[tag].value = value if not isinstance(value, list) else "\\".join(map(str, value))
                    ds.save_as(path)
            run(f"{tag}={value!r}", src)
    for i in range(10):
        src = tmp_path / f"bytes{case}"
        _, paths = write_series(src, hu, spacing=(2.0, 1.0, 1.0), origin=origin)
        for path in paths:
            data = path.read_bytes()
            path.write_bytes(flip_bytes(data, rng, 8, start=128, stop=600) if i % 2 else data[: int(len(data) * rng.uniform(0.1, 1))])
        run(f"damaged bytes {i}", src)
    verdicts.assert_clean(at_least=40)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of an untrained tiny model with the meta sampling needs."""
    from prdit.config import DiffusionConfig
    from prdit.models import create_model

    model = create_model("PRDiT-T/6/0", input_size=12, in_channels=1, out_channels=1, stride=4)
    meta = CheckpointMeta(model_name="PRDiT-T/6/0", input_size=12, stride=4, in_channels=1, out_channels=1, depth=0,
                          local_frozen=False, fine_tuned=[], spacing=[1.0, 1.0, 1.0],
                          intensity={"mode": "hu", "window": [-1000.0, 1000.0], "percentile": 99.5},
                          diffusion=DiffusionConfig().model_dump(mode="json")).to_dict()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "ema": model.state_dict(), "step": 1, "meta": meta}, path)
    load_pipeline(path, device="cpu")  # the intact file loads
    return path


def test_safetensors_headers_and_checkpoints(tmp_path, tiny_checkpoint):
    """45 exported .safetensors and .pt files: damaged header lengths and JSON, odd dtypes and offsets, bad or
    missing prdit metadata, truncations and random bytes."""
    rng = np.random.default_rng(4)
    good = export_weights(tiny_checkpoint, tmp_path / "good.safetensors", half=True).read_bytes()
    (length,) = struct.unpack("<Q", good[:8])
    header, body = json.loads(good[8 : 8 + length]), good[8 + length :]
    verdicts = Verdicts()
    verdicts.check("intact", load_pipeline, write(tmp_path / "intact.safetensors", good), "cpu")
    assert verdicts.loaded == 1

    def with_header(name: str, changed: dict | bytes, data: bytes = body) -> None:
        raw = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
        path = write(tmp_path / f"{name}.safetensors", struct.pack("<Q", len(raw)) + raw + data)
        verdicts.check(name, load_pipeline, path, "cpu")

    tensor = next(k for k in header if k != "__metadata__")
    meta = json.loads(header["__metadata__"]["prdit_meta"])
    for i, raw in enumerate([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"a": 1}', b" " * 10]):
        with_header(f"raw header {i}", raw)
    for i, change in enumerate([{"dtype": "F99"}, {"dtype": "I8"}, {"shape": [10**12]}, {"shape": [-1]},
                                {"data_offsets": [0, 10**12]}, {"data_offsets": [5, 1]}, {"shape": "x"}]):
        with_header(f"tensor field {i}", {**header, tensor: {**header[tensor], **change}})
    for i, metadata in enumerate([{}, {"prdit_meta": "{"}, {"prdit_meta": "[]"}, {"prdit_meta": "{}"},
                                  {"prdit_meta": json.dumps({**meta, "model_name": "PRDiT-Q/1/1"})},
                                  {"prdit_meta": json.dumps({**meta, "input_size": 13})},
                                  {"prdit_meta": json.dumps({k: v for k, v in meta.items() if k != "intensity"})},
                                  {"prdit_meta": json.dumps({**meta, "diffusion": {"steps": "many"}}), "step": "x"},
                                  {"prdit_meta": json.dumps({**meta, "spacing": [1.0]}), "weights": "other"}]):
        with_header(f"metadata {i}", {**header, "__metadata__": metadata})
    with_header("missing tensor", {k: v for k, v in header.items() if k != tensor})
    for i in range(6):
        data = flip_bytes(good, rng, 3, stop=8 + length) if i % 2 else good[: int(len(good) * rng.uniform(0, 1))]
        verdicts.check(f"damaged safetensors {i}", load_pipeline, write(tmp_path / f"damaged{i}.safetensors", data), "cpu")
    checkpoint = tiny_checkpoint.read_bytes()
    for i in range(8):
        data = flip_bytes(checkpoint, rng, 16) if i % 2 else checkpoint[: int(len(checkpoint) * rng.uniform(0, 1))]
        verdicts.check(f"damaged checkpoint {i}", load_checkpoint, write(tmp_path / f"damaged{i}.pt", data))
    state = torch.load(tiny_checkpoint, weights_only=True)
    for i, change in enumerate([{"meta": {}}, {"meta": {**state["meta"], "model_name": 7}}, {"ema": {}}, {"model": None, "ema": None},
                                {"meta": {**state["meta"], "stride": 5}}, {"meta": "x"}]):
        path = save_checkpoint({**state, **change}, tmp_path / f"state{i}.pt")
        verdicts.check(f"checkpoint fields {i}", load_pipeline, path, "cpu")
    verdicts.assert_clean(at_least=45)


def test_yaml_configs(tmp_path):
    """50 YAML configs: random edits of a shipped config, wrong types, unknown keys, odd YAML, python tags."""
    rng = np.random.default_rng(5)
    text = (ROOT / "prdit" / "configs" / "phantom" / "global.yaml").read_text()
    verdicts = Verdicts()
    verdicts.check("intact", load_config, write(tmp_path / "intact.yaml", text.encode()))
    assert verdicts.loaded == 1
    fixed = ["", "- a\n- b\n", "42", "data: 3\n", "data: {image_size: -4}\n", "model: {name: PRDiT-Z/3/9}\n",
             "training: {lr: abc}\n", "training: {lr: .nan}\n", "training: {total_steps: 1e400}\n", "dataa: {}\n",
             "data: {root: [1, 2]}\n", "!!python/object/apply:os.system ['true']\n", "a: &x [*x]\n", "{{{\n",
             "\t data: 1\n", "data:\n  image_size: 64\n  image_size: 32\n", "? [a]\n: b\n", "training: {betas: [1, 2, 3]}\n",
             "logging: {log_every: 0}\n", "\xff\xfe garbage", "data: {dataset: folder}\n", "output: {results_dir: null}\n"]
    for i, body in enumerate(fixed):
        verdicts.check(f"fixed {i}: {body[:30]!r}", load_config, write(tmp_path / f"fixed{i}.yaml", body.encode("utf-8", "surrogateescape")))
    lines = text.splitlines()
    for i in range(20):
        edited = list(lines)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(0, len(edited)))
            choice = rng.integers(0, 4)
            if choice == 0:
                edited[k] = edited[k][: int(rng.integers(0, len(edited[k]) + 1))]
            elif choice == 1:
                edited.insert(k, edited[k])
            elif choice == 2 and ":" in edited[k]:
                edited[k] = edited[k].split(":")[0] + ": " + str(rng.choice(["-1", "[]", "{}", "x", "1e9", "null", "true"]))
            else:
                edited[k] = "  " * int(rng.integers(0, 3)) + edited[k].lstrip()
        verdicts.check(f"edited {i}", load_config, write(tmp_path / f"edited{i}.yaml", "\n".join(edited).encode()))
    for i, override in enumerate(["training.lr=x", "data=3", "nope.key=1", "training.lr", "=1", "training..lr=1",
                                  "data.image_size=[1,2]", "training.betas={a: 1}"]):
        verdicts.check(f"override {override}", load_config, tmp_path / "intact.yaml", [override])
    verdicts.assert_clean(at_least=50)

