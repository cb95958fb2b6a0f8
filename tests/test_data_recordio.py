"""RecordIO files written byte by byte here (independently of data.recordio) are read back exactly."""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.images import ImageDataError
from data.recordio import RecordIODataset, RecordIOError, RecordIOFile, write_recordio

MAGIC = 0xCED7230A


def frame(data: bytes, cflag: int = 0) -> bytes:
    """One dmlc-core part: magic, lrec = cflag << 29 | length, data, zero padding to 4 bytes."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def payload(image: bytes, label: float | list[float]) -> bytes:
    """mxnet recordio.pack: IRHeader (flag, label, id, id2) [+ float32 labels] + image."""
    if isinstance(label, list):
        return struct.pack("<IfQQ", len(label), 0.0, 0, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, label, 0, 0) + image


def write_pair(folder, records: dict[int, bytes]) -> tuple:
    """train.rec of the framed records in dict order and train.idx 'key<TAB>offset' lines."""
    rec, idx = folder / "train.rec", folder / "train.idx"
    offset, lines, blob = 0, [], b""
    for key, framed in records.items():
        lines.append(f"{key}\t{offset}\n")
        blob += framed
        offset += len(framed)
    rec.write_bytes(blob)
    idx.write_text("".join(lines))
    return rec, idx


def faces(count: int, size: int = 112, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def png(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def insightface_pair(folder, images: list[np.ndarray], labels: list) -> tuple:
    """Header record 0 (flag 2: label[0] = one past the last image key) then images 1..N."""
    end = float(len(images) + 1)
    records = {0: frame(payload(b"", [end, end]))}
    for key, (image, label) in enumerate(zip(images, labels), start=1):
        records[key] = frame(payload(png(image), label))
    return write_pair(folder, records)


def test_header_record_scalar_and_multi_float_labels(tmp_path):
    images = faces(5)
    labels = [3.0, [7.0, 0.25, -1.5], 0.0, [12.0], 41.0]
    insightface_pair(tmp_path, images, labels)
    dataset = RecordIODataset(tmp_path)
    assert len(dataset) == 5
    assert dataset.keys.tolist() == [1, 2, 3, 4, 5]
    for i, (image, label) in enumerate(zip(images, labels)):
        pixels, cls = dataset.record(i)
        np.testing.assert_array_equal(pixels, image)
        assert cls == int(label[0] if isinstance(label, list) else label)
        tensor, cls2 = dataset[i]
        expected = torch.from_numpy(image).permute(2, 0, 1)  # uint8: normalised batched, by the model's spec
        assert cls2 == cls and torch.equal(tensor, expected)


def test_without_header_every_key_is_an_image_and_rec_path_is_accepted(tmp_path):
    images = faces(3, size=150, seed=1)
    keys = [0, 5, 9]
    rec, _ = write_pair(tmp_path, {k: frame(payload(png(im), float(k))) for k, im in zip(keys, images)})
    dataset = RecordIODataset(rec)
    assert dataset.keys.tolist() == keys
    for i, image in enumerate(images):
        pixels, label = dataset.record(i)
        assert pixels.shape == (112, 112, 3) and label == keys[i]
        reference = cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)
        assert np.abs(pixels.astype(int) - reference).max() <= 1


def test_multi_part_record_is_joined_with_the_magic_word(tmp_path):
    image = faces(1, seed=2)[0]
    magic_float = struct.unpack("<f", struct.pack("<I", MAGIC))[0]
    whole = payload(png(image), [6.0, magic_float])  # magic word at byte 28 (4-aligned) of the payload
    assert whole[28:32] == struct.pack("<I", MAGIC)
    split = frame(whole[:28], 1) + frame(whole[32:], 3)
    three = b"\x01\x02\x03\x04" + struct.pack("<I", MAGIC) + b"abcd" + struct.pack("<I", MAGIC) + b"xyz"
    three_parts = frame(three[:4], 1) + frame(three[8:12], 2) + frame(three[16:], 3)
    rec, _ = write_pair(tmp_path, {1: split, 2: three_parts, 3: frame(payload(png(image), 1.0))})
    file = RecordIOFile(rec)
    assert file.read(1) == whole
    assert file.read(2) == three
    dataset = RecordIODataset(rec)
    pixels, label = dataset.record(0)
    np.testing.assert_array_equal(pixels, image)
    assert label == 6
    # the library writer (header record 0, then images) splits exactly like dmlc-core
    written, written_idx = write_recordio(tmp_path / "lib.rec", [(png(image), [6.0, magic_float]),
                                                                 (png(image), 1.0)])
    (tmp_path / "hand").mkdir()
    by_hand, by_hand_idx = write_pair(tmp_path / "hand", {0: frame(payload(b"", [3.0, 3.0])), 1: split,
                                                          2: frame(payload(png(image), 1.0))})
    assert written.read_bytes() == by_hand.read_bytes()
    assert written_idx.read_text() == by_hand_idx.read_text()


def test_writer_round_trip_and_parallel_workers(tmp_path):
    images = faces(12, size=112, seed=3)
    write_recordio(tmp_path / "train.rec", [(png(im), float(i % 4)) for i, im in enumerate(images)])
    dataset = RecordIODataset(tmp_path)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, shuffle=False)
    tensors, labels = zip(*[(x, y) for x, y in loader])
    got = torch.cat(tensors)
    expected = torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images])
    assert torch.equal(got, expected)
    assert torch.cat(labels).tolist() == [i % 4 for i in range(12)]


def test_index_is_two_numpy_arrays_and_reads_an_unsorted_idx_with_a_repeated_key(tmp_path):
    images = faces(5, size=112, seed=4)
    rec, idx = write_recordio(tmp_path / "train.rec", [(png(im), float(i)) for i, im in enumerate(images)])
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([lines[3], lines[0], lines[5], lines[2], lines[4], "3\t0", lines[1], lines[3]]) + "\n")
    index = RecordIOFile(rec).index  # key 3 listed twice: its last line (the right offset) counts
    assert isinstance(index.keys, np.ndarray) and isinstance(index.offsets, np.ndarray) and len(index) == 6
    assert 5 in index and 6 not in index and index.last_record() == 5
    dataset = RecordIODataset(tmp_path)
    for i, image in enumerate(images):
        got, label = dataset.record(i)
        assert np.array_equal(got, image) and label == i


@pytest.fixture
def good_pair(tmp_path):
    rec, idx = insightface_pair(tmp_path, faces(4, seed=4), [1.0, 2.0, 3.0, 4.0])
    return rec, idx


def test_truncated_file_names_file_and_record(good_pair):
    rec, _ = good_pair
    rec.write_bytes(rec.read_bytes()[:-100])  # cut into the last record
    with pytest.raises(RecordIOError, match=r"train\.rec record 4: .*truncated"):
        RecordIODataset(rec)


def test_truncated_before_a_record_start_names_idx_line(good_pair):
    rec, idx = good_pair
    offsets = [int(line.split()[1]) for line in idx.read_text().splitlines()]
    rec.write_bytes(rec.read_bytes()[: offsets[3] + 4])  # record 3 begins but its header is cut
    with pytest.raises(RecordIOError, match=r"train\.idx line 4: record 3 at byte \d+ lies beyond the end of .*rec"):
        RecordIODataset(rec)


def test_bad_magic_names_record(good_pair):
    rec, idx = good_pair
    offset = int(idx.read_text().splitlines()[2].split()[1])
    blob = bytearray(rec.read_bytes())
    blob[offset:offset + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(blob))
    dataset = RecordIODataset(rec)
    dataset.record(0)
    with pytest.raises(RecordIOError, match=r"train\.rec record 2: bad magic number 0x00000000"):
        dataset.record(1)


def test_missing_idx(good_pair):
    rec, idx = good_pair
    idx.unlink()
    with pytest.raises(RecordIOError, match=r"index file .*train\.idx not found"):
        RecordIODataset(rec)


def test_key_beyond_file(good_pair):
    rec, idx = good_pair
    size = rec.stat().st_size
    idx.write_text(idx.read_text() + f"5\t{size + 64}\n")
    with pytest.raises(RecordIOError, match=rf"train\.idx line 6: record 5 at byte {size + 64} lies beyond"):
        RecordIODataset(rec)


def test_header_announcing_unlisted_images(good_pair):
    rec, idx = good_pair
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # drop image key 3
    with pytest.raises(RecordIOError, match="announces images 1..4 but record 3 is not in"):
        RecordIODataset(rec)


def test_undecodable_image_names_record(tmp_path):
    rec, _ = write_pair(tmp_path, {0: frame(payload(b"not an image at all", 1.0))})
    dataset = RecordIODataset(rec)
    with pytest.raises(ImageDataError, match=r"cannot decode image .*train\.rec record 0"):
        dataset[0]
