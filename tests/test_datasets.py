"""Datasets in a bucket: `weldstream import DIR --to s3://…` keeps the checked pairs (broken ones reported,
not copied), and a fetched copy is a folder whose pairs are byte for byte what was imported."""

from __future__ import annotations

import boto3
import numpy as np
import pytest

from weldstream.datasets import DamagedDataset, fetch_dataset, local_folder
from weldstream.learner.importer import ImportConfig, import_folder
from weldstream.learner.scan_folder import FolderOptions, find_pairs, read_mask
from weldstream.s3_client import S3Location

from .test_import import _broken_folder


def _bucket_client():
    return boto3.client("s3")


async def test_an_imported_dataset_comes_back_as_the_pairs_that_passed(s3_store_url, tmp_path):
    expected = _broken_folder(tmp_path / "scans")
    url = f"{s3_store_url}/datasets/plant7"
    cfg = ImportConfig(kafka="unused:9092", rate=0, binary_class=1, mask_series={"W0001": "W0002"}, to=url)
    report = await import_folder(tmp_path / "scans", cfg)
    assert report.sent == len(expected) and len(report.skipped) == 5

    copy = fetch_dataset(url, tmp_path / "copy")
    pairs = {p.scan_id: p for p in find_pairs(copy, FolderOptions())}
    assert set(pairs) == expected
    originals = {p.scan_id: p for p in find_pairs(tmp_path / "scans", FolderOptions(mask_series={"W0001": "W0002"}))}
    for scan_id, pair in pairs.items():
        assert pair.image.read_bytes() == originals[scan_id].image.read_bytes()
        assert np.array_equal(read_mask(pair.mask, 0), read_mask(originals[scan_id].mask, 1))  # classes, not 0/255
        assert pair.domain == originals[scan_id].domain

    # Read back through the same door: importing the dataset itself checks every pair again.
    again = await import_folder(url, ImportConfig(kafka="unused:9092", dry_run=True))
    assert again.sent == len(expected) and not again.skipped
    assert local_folder(tmp_path / "scans") == tmp_path / "scans"


async def test_the_benchmark_reads_a_dataset_from_the_bucket(s3_store_url, tmp_path):
    from weldstream.bench.cl.config import BenchConfig
    from weldstream.bench.cl.stream import build_stream
    from weldstream.simulator.dataset import write_dataset

    for domain, seed in (("ut-pe100-5mhz", 0), ("xray-film-steel-x52", 50)):
        write_dataset(tmp_path / "sim" / domain, domain, 8, seed=seed, size=(64, 64))
    url = f"{s3_store_url}/datasets/bench"
    report = await import_folder(tmp_path / "sim", ImportConfig(kafka="unused:9092", rate=0, to=url))
    assert report.sent == 16
    # consolidate --data reads the same fetched folder through the learner's corpus reader.
    from weldstream.learner.corpus import read_folder
    from weldstream.model import ModelConfig

    corpus = read_folder(local_folder(url, tmp_path / "fetched"), ModelConfig(), 0.25)
    held_out = sum(corpus.validation.size(d) for d in corpus.validation.domains())
    assert sum(len(v) for v in corpus.train.values()) + held_out == 16 and corpus.invalid == 0
    from_bucket = build_stream(BenchConfig(data=url, size=(64, 64), test_share=0.3))
    from_folder = build_stream(BenchConfig(data=tmp_path / "sim", size=(64, 64), test_share=0.3))
    assert from_bucket.names == from_folder.names == ["ut-pe100-5mhz", "xray-film-steel-x52"]
    for ours, theirs in zip(from_bucket.domains, from_folder.domains, strict=True):
        assert len(ours.x_test) == len(theirs.x_test) and len(ours.x_train) == len(theirs.x_train)


async def test_a_damaged_file_in_the_bucket_is_refused_by_name(s3_store_url, tmp_path):
    expected = _broken_folder(tmp_path / "scans")
    url = f"{s3_store_url}/datasets/damaged"
    await import_folder(tmp_path / "scans", ImportConfig(kafka="unused:9092", rate=0, binary_class=1,
                                                         mask_series={"W0001": "W0002"}, to=url))
    where = S3Location.parse(url)
    key = where.key(f"masks/{sorted(expected)[0]}.png")
    client = _bucket_client()
    body = bytearray(client.get_object(Bucket=where.bucket, Key=key)["Body"].read())
    body[-5] ^= 0xFF
    client.put_object(Bucket=where.bucket, Key=key, Body=bytes(body))
    with pytest.raises(DamagedDataset, match=sorted(expected)[0]):
        fetch_dataset(url, tmp_path / "copy")


def test_to_takes_only_a_bucket_url():
    with pytest.raises(ValueError, match="s3://"):
        ImportConfig(to="/srv/datasets/plant7")
