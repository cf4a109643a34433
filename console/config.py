"""`weldstream console` settings: one flag and one ``WELDSTREAM_*`` variable each, as elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weldstream.kafka_security import KafkaSecurity
from weldstream.registry import REGISTRY_HELP
from weldstream.settings import optional_path, optional_text, setting
from weldstream.stores import MODEL_DIR_HELP, STORE_HELP, store_location
from weldstream.topics import DEFAULT_KAFKA, LABELED_SCANS, MODELS, REVIEW
from weldstream.weight_store import DEFAULT_MODEL_DIR

REVIEW_GROUP = "weldstream-console"


@dataclass(frozen=True)
class ServerConnection:
    """How the console reaches `weldstream serve`: the same TLS and token options as `weldstream infer`."""

    server: str = setting("127.0.0.1:8001", help="the gRPC server HOST:PORT whose model the console shows")
    tls_ca: Path | None = setting(None, parse=optional_path,
                                  help="PEM CA bundle that signed the server's certificate: connect over TLS")
    tls_cert: Path | None = setting(None, parse=optional_path, help="PEM client certificate (mutual TLS)")
    tls_key: Path | None = setting(None, parse=optional_path, help="PEM private key of --tls-cert")
    auth_token_file: Path | None = setting(None, parse=optional_path,
                                           help="file holding the bearer token the server expects")
    server_metrics: str = setting("", help="the server's Prometheus endpoint (http://HOST:8002/metrics) read for "
                                           "the rigs page ('': the server's host on port 8002)")


@dataclass(frozen=True)
class ConsoleConfig:
    http_host: str = setting("127.0.0.1", help="address the web console listens on (0.0.0.0: every interface)")
    http_port: int = setting(8080, help="port of the web console")
    data_dir: Path = setting(Path("runs/console"), help="the console's own folder: review scans, uploads, "
                                                        "accounts' database when no registry is shared")
    kafka: str | None = setting(DEFAULT_KAFKA, parse=optional_text,
                                help="Kafka bootstrap HOST:PORT ('' : no review queue feed, no labels sent)")
    model_dir: Path = setting(DEFAULT_MODEL_DIR, help=MODEL_DIR_HELP)
    store: str = setting("", parse=store_location, help=STORE_HELP)
    registry: str = setting("", help=REGISTRY_HELP + "; the review queue and accounts live there too")
    lease_s: float = setting(600.0, help="how long an opened review item stays claimed by its inspector")
    session_hours: float = setting(12.0, help="how long a browser login lasts")
    tls_certfile: Path | None = setting(None, parse=optional_path, help="serve HTTPS with this PEM certificate")
    tls_keyfile: Path | None = setting(None, parse=optional_path, help="private key of --tls-certfile")
    behind_https: bool = setting(False, help="a TLS proxy of the plant fronts the console: mark cookies Secure")
    review_topic: str = REVIEW
    labeled_topic: str = LABELED_SCANS
    models_topic: str = MODELS
    review_group: str = REVIEW_GROUP
    upload_mb: int = setting(512, help="largest upload accepted (a dataset zip), in MiB")
    connection: ServerConnection = field(default_factory=ServerConnection)
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @property
    def secure_cookies(self) -> bool:
        return self.tls_certfile is not None or self.behind_https
