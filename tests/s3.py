"""The SeaweedFS test server, which lives in the dev tooling (weldstream.dev.seaweed) so benchmarks use it too."""

from weldstream.dev.seaweed import MISSING_WEED, SeaweedS3, weed_binary

__all__ = ["MISSING_WEED", "SeaweedS3", "weed_binary"]
