"""`weldstream import`: a folder with some broken pairs reports each with its reason and streams the rest."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
from aiokafka import AIOKafkaConsumer
from PIL import Image

from weldstream.learner.importer import ImportConfig, import_folder
from weldstream.learner.records import decode_record
from weldstream.simulator.dataset import write_dataset
from weldstream.topics import LABELED_SCANS


def _broken_folder(root):
    """Three layouts, each with good pairs and broken ones; returns the scan ids that should get through."""
    # An index CSV with a domain column (what `weldstream simulate --out` writes): one mask missing,
    # one image that is not an image.
    write_dataset(root / "site-a", "ut-pe100-5mhz", 4, seed=0, size=(64, 64))
    ut = sorted((root / "site-a" / "images").iterdir())
    (root / "site-a" / "masks" / f"{ut[0].stem}.png").unlink()
    ut[1].write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of the sort")
    # images/ beside masks/, no index: the folder is the domain. A mask of the wrong size, one with class 9.
    write_dataset(root / "rig-7", "xray-film-steel-x52", 4, seed=10, size=(64, 64))
    (root / "rig-7" / "index.csv").unlink()
    (root / "rig-7" / "index.json").unlink()
    xray = sorted((root / "rig-7" / "masks").iterdir())
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(xray[0])
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(xray[1])
    # GDXray-style series: radiographs in W0001, binary (0/255) masks in W0002; W0001_0003 has no mask.
    rng = np.random.default_rng(0)
    for folder in ("W0001", "W0002"):
        (root / "Welds" / folder).mkdir(parents=True)
    for n in (1, 2, 3):
        radiograph = (rng.random((64, 80)) * 65535).astype(np.uint16)
        Image.fromarray(radiograph).save(root / "Welds/W0001" / f"W0001_{n:04d}.png")
    for n in (1, 2):
        mask = np.zeros((64, 80), np.uint8)
        mask[20:30, 10:40] = 255
        Image.fromarray(mask).save(root / "Welds/W0002" / f"W0002_{n:04d}.png")
    return {ut[2].stem, ut[3].stem, *(m.stem for m in xray[2:]), "W0001_0001", "W0001_0002"}


async def test_broken_pairs_are_reported_and_the_rest_streamed(broker, tmp_path):
    expected = _broken_folder(tmp_path / "scans")
    cfg = ImportConfig(kafka=broker.bootstrap, rate=0, binary_class=1, mask_series={"W0001": "W0002"},
                       report=str(tmp_path / "report.json"))
    report = await import_folder(tmp_path / "scans", cfg)

    assert report.sent == len(expected) == 6
    assert report.per_domain == {"ut-pe100-5mhz": 2, "rig-7": 2, "Welds/W0001": 2}
    reasons = {path.split("/")[-1]: why for path, why in report.skipped}
    assert len(reasons) == 5, reasons
    assert any(why.startswith("file:") and "does not exist" in why for why in reasons.values())  # missing mask
    assert any(why.startswith("image.encoded.data: is not a decodable PNG") for why in reasons.values())
    assert any(why.startswith("mask.shape: [32, 64] does not match") for why in reasons.values())
    assert any(why.startswith("mask.data: has class id 9") for why in reasons.values())
    assert reasons["W0001_0003.png"] == "mask: no mask found for W0001_0003.png"
    assert json.loads((tmp_path / "report.json").read_text())["sent"] == 6

    got = {}
    consumer = AIOKafkaConsumer(LABELED_SCANS, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + 20
        while len(got) < len(expected) and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    got[m.key.decode()] = decode_record(m.value, num_classes=5, in_channels=1, max_side=4096)
        await asyncio.sleep(0.5)
        assert not any((await consumer.getmany(timeout_ms=500)).values())  # nothing else was sent
    finally:
        await consumer.stop()
    assert set(got) == expected
    gdx = got["W0001_0001"]
    assert gdx.domain == "Welds/W0001" and set(gdx.y.unique().tolist()) == {0, 1}  # 255 -> crack
    assert tuple(gdx.x.shape) == (1, 64, 80)


async def test_a_dry_run_checks_without_a_broker(tmp_path):
    _broken_folder(tmp_path / "scans")
    report = await import_folder(tmp_path / "scans", ImportConfig(kafka="127.0.0.1:1", dry_run=True,
                                                                               mask_series={"W0001": "W0002"}))
    # Without --binary-class the GDXray masks are refused too, saying what to pass.
    assert report.sent == 4 and len(report.skipped) == 7
    assert sum("--binary-class" in why for _, why in report.skipped) == 2


def test_the_import_command_reports_what_it_would_send(tmp_path):
    from .test_cli import weldstream

    _broken_folder(tmp_path / "scans")
    result = weldstream("import", str(tmp_path / "scans"), "--dry-run", "--binary-class", "1", "--mask-series",
                        "W0001=W0002")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "would send 6 labeled scans (Welds/W0001: 2, rig-7: 2, ut-pe100-5mhz: 2); skipped 5"
    assert len(lines) == 6 and all(line.startswith("  skipped ") for line in lines[1:])
