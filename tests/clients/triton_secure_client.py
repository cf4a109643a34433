"""tritonclient over TLS, with or without a bearer token; prints what the server answered as JSON.

Usage: triton_secure_client.py TARGET CA_FILE [TOKEN]
"""

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

target, ca = sys.argv[1], sys.argv[2]
headers = {"authorization": f"Bearer {sys.argv[3]}"} if len(sys.argv) > 3 else None
client = triton.InferenceServerClient(url=target, ssl=True, root_certificates=ca)
result: dict = {}
try:
    result["live"] = client.is_server_live(headers=headers)
    scan = np.zeros((1, 1, 64, 64), np.uint8)
    inp = triton.InferInput("scan", list(scan.shape), "UINT8")
    inp.set_data_from_numpy(scan)
    reply = client.infer("weld-seg", [inp], outputs=[triton.InferRequestedOutput("mask")], headers=headers)
    result["mask_shape"] = list(reply.as_numpy("mask").shape)
except InferenceServerException as exc:
    result["error"] = exc.status()
print(json.dumps(result))
client.close()
