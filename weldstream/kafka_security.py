"""How every Kafka client of weldstream reaches a secured cluster: TLS and SASL (PLAIN, SCRAM-SHA-256/512).

The settings hold file paths only; the SASL password is read from its file when a client is built and
goes straight to aiokafka, so it never sits in a config object, a log line or a process listing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weldstream.settings import optional_path, setting

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    security_protocol: str = setting("PLAINTEXT", flag="--kafka-security-protocol", choices=PROTOCOLS,
                                     help="how Kafka clients connect: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    ssl_cafile: Path | None = setting(None, flag="--kafka-ssl-cafile", parse=optional_path,
                                      help="PEM CA bundle that signed the brokers' certificates")
    ssl_certfile: Path | None = setting(None, flag="--kafka-ssl-certfile", parse=optional_path,
                                        help="PEM client certificate, for brokers that require one")
    ssl_keyfile: Path | None = setting(None, flag="--kafka-ssl-keyfile", parse=optional_path,
                                       help="PEM private key of --kafka-ssl-certfile")
    sasl_mechanism: str = setting("PLAIN", flag="--kafka-sasl-mechanism", choices=MECHANISMS,
                                  help="SASL mechanism with SASL_PLAINTEXT or SASL_SSL")
    sasl_username: str = setting("", flag="--kafka-sasl-username", help="SASL user name")
    sasl_password_file: Path | None = setting(None, flag="--kafka-sasl-password-file", parse=optional_path,
                                              help="file holding the SASL password (never given on the command line)")

    def __post_init__(self) -> None:
        if self.security_protocol not in PROTOCOLS:
            raise ValueError(f"kafka security protocol must be one of {PROTOCOLS}")
        if self.sasl_mechanism not in MECHANISMS:
            raise ValueError(f"kafka SASL mechanism must be one of {MECHANISMS}")
        if self.uses_sasl and (not self.sasl_username or self.sasl_password_file is None):
            raise ValueError(f"{self.security_protocol} needs --kafka-sasl-username and --kafka-sasl-password-file")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--kafka-ssl-certfile and --kafka-ssl-keyfile go together")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaAdminClient."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_tls:
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile, certfile=self.ssl_certfile,
                                                       keyfile=self.ssl_keyfile)
        if self.uses_sasl:
            password = Path(self.sasl_password_file).read_text(encoding="utf-8").strip("\r\n")
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=password)
        return kwargs
