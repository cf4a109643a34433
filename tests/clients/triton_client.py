"""An unmodified tritonclient session against a weldstream server; run as a separate process.

tritonclient registers its own copy of the `inference` protos in the default descriptor pool, so it
runs outside the test process that already loaded weldstream's.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton

target = sys.argv[1]
client = triton.InferenceServerClient(url=target)
result: dict = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("weld-seg"),
    "server": client.get_server_metadata(as_json=True),
    "model": client.get_model_metadata("weld-seg", as_json=True),
}
scan = (np.random.default_rng(0).random((2, 1, 72, 100)) * 4095).astype(np.uint16)
inp = triton.InferInput("scan", list(scan.shape), "UINT16")
inp.set_data_from_numpy(scan)
outputs = [triton.InferRequestedOutput("mask"), triton.InferRequestedOutput("confidence")]
reply = client.infer("weld-seg", [inp], outputs=outputs)
mask = reply.as_numpy("mask")
confidence = reply.as_numpy("confidence")
result["mask"] = {"shape": list(mask.shape), "dtype": str(mask.dtype), "max": int(mask.max())}
result["confidence"] = {"shape": list(confidence.shape), "dtype": str(confidence.dtype),
                        "min": float(confidence.min())}
result["version"] = reply.get_response().model_version
# the optional extension: the request parameter regions=true adds a BYTES output, one JSON list per scan
with_regions = client.infer("weld-seg", [inp], parameters={"regions": True})
result["regions"] = [json.loads(element) for element in with_regions.as_numpy("regions")]
result["regions_mask_equal"] = bool((with_regions.as_numpy("mask") == mask).all())
result["plain_outputs"] = sorted(o.name for o in reply.get_response().outputs)
try:
    client.infer("no-such-model", [inp])
    result["bad_model"] = "accepted"
except triton.InferenceServerException as exc:
    result["bad_model"] = exc.status()
print(json.dumps(result))
client.close()
