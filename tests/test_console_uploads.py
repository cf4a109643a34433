"""Uploads through the console's API: dataset zips against a real broker (every hostile zip refused with its
reason and nothing written outside the data folder; broken pairs reported, the good ones streamed; cancel; a
restart), and scans tried against a real server (PNG, 16-bit TIFF, DICOM; refusals; a server that is down)."""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.console_stack import (
    add_account,
    client,
    console_config,
    png_array,
    read_labeled,
    running_console,
    with_server,
)
from tests.upload_files import (
    bomb_zip,
    broken_dataset,
    dicom_bytes,
    dicom_pixels,
    many_files_zip,
    many_small_bombs_zip,
    png_bytes,
    symlink_zip,
    tiff_bytes,
    wide_png,
    zip_folder,
    zip_of,
)
from weldstream.codec import decode_image, tensor_to_array
from weldstream.console.dataset_jobs import Jobs
from weldstream.console.scan_files import Oversized, read_scan
from weldstream.console.services import open_services
from weldstream.dev.broker import free_port
from weldstream.errors import InvalidInput
from weldstream.simulator.dataset import write_dataset

FINISHED = ("done", "failed", "cancelled")


@pytest.fixture
def ops(tmp_path, broker):
    cfg = console_config(tmp_path, broker.bootstrap, upload_mb=8)
    return cfg, {name: add_account(cfg, name, role) for name, role in (("olga", "operator"), ("vic", "viewer"))}


async def upload(http, path: Path, **fields) -> object:
    with path.open("rb") as handle:
        return await http.post("/api/datasets", files={"file": (path.name, handle, "application/zip")},
                               data={k: str(v) for k, v in fields.items()})


async def wait_job(http, job_id: str, until=FINISHED, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = (await http.get(f"/api/jobs/{job_id}")).json()
        if job["state"] in until or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.1)


def files_outside(root: Path, *inside: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not any(p.is_relative_to(i) for i in inside)}


async def test_hostile_zips_are_refused_with_the_reason_and_nothing_lands_outside_the_data_folder(
        ops, tmp_path, monkeypatch):
    cfg, tokens = ops
    zips = tmp_path / "zips"
    zips.mkdir()
    scan = png_bytes(np.zeros((16, 16), np.uint8))
    (zips / "not-a-zip.zip").write_bytes(b"hello, not a zip")
    (zips / "huge.zip").write_bytes(np.random.default_rng(0).bytes(9 << 20))
    cases = [
        (zip_of(zips / "climb.zip", {"scans/a.png": scan, "../" * 8 + "escaped.png": scan}), "climbs out"),
        (zip_of(zips / "absolute.zip", {"/tmp/weldstream-escaped.png": scan}), "absolute path"),
        (symlink_zip(zips / "link.zip"), "'scans/images/b.png' is a symbolic link"),
        (many_files_zip(zips / "many.zip"), "holds 50000 entries; at most 20000"),
        (bomb_zip(zips / "bomb.zip"), "into 1073741824 (1011:1, above 200:1): a decompression bomb"),
        (many_small_bombs_zip(zips / "small-bombs.zip", 80), "unpacks to more than 64 MiB"),
        (zip_of(zips / "notes.zip", {"scans/a.png": scan, "scans/notes.txt": b"hello"}),
         "'scans/notes.txt' is not a scan or an index"),
        (zip_of(zips / "wide.zip", {"scans/images/w.png": wide_png(), "scans/masks/w.png": scan}),
         "scans/images/w.png: is 100000 x 64 px; scans may be at most 4096 x 4096 px"),
        (zips / "not-a-zip.zip", "is not a zip file"),
        (zips / "huge.zip", "file: is larger than the limit of 8 MiB (--upload-mb)"),
    ]
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    before = files_outside(tmp_path, cfg.data_dir, cfg.model_dir)

    async with running_console(cfg) as url, client(url, tokens["olga"]) as olga:
        for path, reason in cases:
            answer = await upload(olga, path)
            assert answer.status_code == 400, (path.name, answer.text)
            assert reason in answer.json()["detail"], (path.name, answer.json()["detail"])
        assert (await olga.get("/api/jobs")).json() == {"jobs": []}

    assert files_outside(tmp_path, cfg.data_dir, cfg.model_dir) == before
    assert not any(system_tmp.iterdir())
    assert not list((cfg.data_dir / "uploads").iterdir())  # each refused upload was removed
    assert not Path("/tmp/weldstream-escaped.png").exists()


async def test_broken_pairs_are_reported_and_exactly_the_good_ones_streamed(ops, tmp_path, broker):
    cfg, tokens = ops
    good, broken = broken_dataset(tmp_path / "scans")
    archive = zip_folder(tmp_path / "scans.zip", tmp_path / "scans")
    async with running_console(cfg) as url, client(url, tokens["olga"]) as olga, client(url, tokens["vic"]) as vic:
        assert (await upload(vic, archive)).status_code == 403
        assert (await vic.get("/api/jobs")).status_code == 403
        answer = await upload(olga, archive, rate=0, rig_id="bench-3")
        assert answer.status_code == 200, answer.text
        job = await wait_job(olga, answer.json()["job"])
        listed = (await olga.get("/api/jobs", params={"kind": "dataset"})).json()["jobs"]

    assert job["state"] == "done", job
    assert (job["sent"], job["done"], job["total"], job["actor"]) == (len(good), len(good), len(good), "olga")
    reasons = dict(job["skipped"])
    assert set(reasons) == set(broken), reasons
    for path, start in broken.items():
        assert reasons[path].startswith(start), (path, reasons[path])
    assert [(j["id"], j["skipped_count"]) for j in listed] == [(job["id"], len(broken))]
    assert not (cfg.data_dir / "uploads" / job["id"]).exists()  # the unpacked files go when the job ends

    labeled = await read_labeled(broker.bootstrap, len(good))
    assert sorted(m.scan_id for m in labeled) == sorted(good)  # once each, nothing else
    assert {m.rig_id for m in labeled} == {"bench-3"}
    dicom = next(m for m in labeled if m.scan_id == "d1")
    assert dicom.domain == "dicom"
    np.testing.assert_array_equal(decode_image(dicom.image), dicom_pixels(1))  # 16 bits kept through the PNG
    assert int((tensor_to_array(dicom.mask, "mask") == 2).sum()) == 200

    svc = open_services(cfg)
    try:
        actions = [(a.action, a.actor) for a in svc.registry.actions()]
    finally:
        svc.registry.close()
    assert ("dataset upload", "console:olga") in actions


async def test_cancel_stops_a_slow_job_before_it_finishes(ops, tmp_path, broker):
    cfg, tokens = ops
    write_dataset(tmp_path / "scans", "ut-pe100-5mhz", 30, seed=0, size=(32, 32))
    archive = zip_folder(tmp_path / "scans.zip", tmp_path / "scans")
    async with running_console(cfg) as url, client(url, tokens["olga"]) as olga:
        job_id = (await upload(olga, archive, rate=4)).json()["job"]
        streaming = await wait_job(olga, job_id, until=("streaming",))
        assert streaming["total"] == 30
        while (await olga.get(f"/api/jobs/{job_id}")).json()["done"] < 2:
            await asyncio.sleep(0.1)
        cancelled = await olga.post(f"/api/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        await asyncio.sleep(1.5)
        job = (await olga.get(f"/api/jobs/{job_id}")).json()
        again = await olga.post(f"/api/jobs/{job_id}/cancel")
        assert again.status_code == 409 and "cancelled already" in again.json()["detail"]

    assert job["state"] == "cancelled" and 2 <= job["sent"] < 30 and job["total"] == 30
    labeled = await read_labeled(broker.bootstrap, job["sent"])
    assert job["sent"] <= len(labeled) < 30
    assert not (cfg.data_dir / "uploads" / job_id).exists()


async def test_jobs_left_running_by_a_stopped_console_are_failed_at_start(ops):
    cfg, tokens = ops
    svc = open_services(cfg)
    try:
        jobs = Jobs(svc.registry)
        jobs.create("left-behind", "olga", {"file": "scans.zip", "sent": 3, "skipped": []})
        jobs.report("left-behind", "streaming", 3, 10, {"file": "scans.zip", "sent": 3, "skipped": []})
    finally:
        svc.registry.close()
    (cfg.data_dir / "uploads" / "left-behind" / "files").mkdir(parents=True)
    async with running_console(cfg) as url, client(url, tokens["olga"]) as olga:
        job = (await olga.get("/api/jobs/left-behind")).json()
    assert (job["state"], job["reason"], job["done"], job["sent"]) == ("failed", "console restarted", 3, 3)
    assert not (cfg.data_dir / "uploads" / "left-behind").exists()


async def try_scan(http, name: str, data: bytes):
    return await http.post("/api/segment", files={"file": (name, data, "application/octet-stream")})


async def test_a_viewer_tries_png_tiff_and_dicom_scans_on_the_live_server(tmp_path, server):
    cfg = with_server(console_config(tmp_path, None), f"127.0.0.1:{server.port}")
    token = add_account(cfg, "vic", "viewer")
    rng = np.random.default_rng(0)
    scans = {"plate.png": png_bytes((rng.random((64, 80)) * 255).astype(np.uint8)),
             "b-scan.tiff": tiff_bytes((rng.random((50, 70)) * 60000).astype(np.uint16)),
             "weld 7.dcm": dicom_bytes(dicom_pixels(3))}
    sizes = {"plate.png": (64, 80), "b-scan.tiff": (50, 70), "weld 7.dcm": (48, 40)}
    async with running_console(cfg) as url, client(url, token) as vic:
        for name, data in scans.items():
            answer = await try_scan(vic, name, data)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["version"] == 0 and (body["height"], body["width"]) == sizes[name]
            assert 0 <= body["doubt"] <= 1 and abs(sum(body["class_fractions"].values()) - 1) < 1e-6
            assert body["scan_id"] == name.rsplit(".", 1)[0].replace(" ", "_")
            assert all({"class_name", "x", "y", "width", "height", "area_px"} <= set(r) for r in body["regions"])
            mask = png_array((await vic.get(f"/api/segment/{body['id']}/mask.png")).content)
            shown = png_array((await vic.get(f"/api/segment/{body['id']}/scan.png")).content)
            assert mask.shape == shown.shape == sizes[name] and mask.max() < 5 and shown.dtype == np.uint8
        refused = {"notes.txt": (b"hello", "file: is not a PNG, TIFF or DICONDE/DICOM file"),
                   "wide.png": (wide_png(), "file: is 100000 x 64 px; scans may be at most 4096 x 4096 px"),
                   "broken.png": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "file")}
        for name, (data, reason) in refused.items():
            answer = await try_scan(vic, name, data)
            assert answer.status_code == 400 and answer.json()["detail"].startswith(reason), answer.text
        assert (await vic.get("/api/segment/unknown/mask.png")).status_code == 404

        await server.stop()
        down = await try_scan(vic, "plate.png", scans["plate.png"])
        assert down.status_code == 503 and f"127.0.0.1:{server.port}" in down.json()["detail"], down.text


async def test_an_unreachable_server_is_a_503(tmp_path):
    cfg = with_server(console_config(tmp_path, None), f"127.0.0.1:{free_port()}")
    token = add_account(cfg, "vic", "viewer")
    async with running_console(cfg) as url, client(url, token) as vic:
        answer = await try_scan(vic, "plate.png", png_bytes(np.zeros((16, 16), np.uint8)))
    assert answer.status_code == 503 and "UNAVAILABLE" in answer.json()["detail"]


def test_scan_files_are_sized_from_their_headers_and_dicom_rescaled():
    pixels = dicom_pixels(5)
    rescaled = read_scan(dicom_bytes(pixels, slope=0.5, intercept=-100.0))
    assert rescaled.dtype == np.float32
    np.testing.assert_allclose(rescaled, pixels * 0.5 - 100.0)
    np.testing.assert_array_equal(read_scan(dicom_bytes(pixels)), pixels)  # no rescale: 16-bit kept
    stack = io.BytesIO()
    tifffile.imwrite(stack, np.zeros((3, 32, 32), np.uint16), photometric="minisblack", metadata=None)
    with pytest.raises(Oversized, match="holds 3 pages"):
        read_scan(stack.getvalue())
    with pytest.raises(Oversized, match="is 5000 x 64 px"):
        read_scan(wide_png(5000, 64))
    with pytest.raises(InvalidInput, match="has no readable PNG header"):
        read_scan(b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
