"""The worker over mutual TLS and SASL/SCRAM against the embedded broker, and what its web server exposes.

TLS: Tansu 0.6.0 cannot terminate TLS (its --cert and --key flags exclude each other), so a TLS terminator made of
Python's ssl sits in front of it (tests/integration/tls.py) and the broker advertises the terminator: every
connection of the worker and of the test's clients is TLS with certificates made in the test, the client's verified
too (mTLS). SASL: Tansu requires SCRAM logins with --authentication, but its in-memory storage cannot hold a user
while requiring authentication (creating one needs an authenticated connection), so what is proven here is the
refusal: wrong credentials stop the worker at start with a clear message that never contains the password.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
from pathlib import Path

import pytest
import trustme

from qcat.worker.broker import EmbeddedBroker, free_port
from tests.integration.kafka import WorkerProcess, consume, produce, question, run_qcat, unique
from tests.integration.tls import TlsTerminator, write_client_files


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_qcat(env, "worker", timeout=120)


def test_worker_consumes_and_produces_over_mutual_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    tls_port = free_port()
    with EmbeddedBroker(advertised=f"127.0.0.1:{tls_port}") as broker:
        terminator = TlsTerminator(broker.address, ca, port=tls_port, require_client_cert=True).start()
        try:
            files = write_client_files(ca, tmp_path / "tls")
            client = ssl.create_default_context(cafile=str(files["cafile"]))
            client.load_cert_chain(str(files["certfile"]), str(files["keyfile"]))
            secure = {"security_protocol": "SSL", "ssl_context": client}
            prefix = unique("t-tls")
            tls_settings = {f"ssl_{name}": path for name, path in files.items()}
            worker = WorkerProcess(
                terminator.address, prefix, tmp_path, security_protocol="SSL", **tls_settings
            ).start()
            try:
                ids = {f"q{i}" for i in range(20)}
                produce(
                    terminator.address,
                    f"{prefix}.incoming",
                    [(i.encode(), question(i, f"Who wrote book {i} ?"), []) for i in sorted(ids)],
                    **secure,
                )
                got = consume(
                    terminator.address,
                    [f"{prefix}.categorized"],
                    lambda c: {e["event_id"] for e in c.values(f"{prefix}.categorized")} >= ids,
                    **secure,
                )
                assert {e["event_id"] for e in got.values(f"{prefix}.categorized")} == ids
            finally:
                worker.stop()

            untrusted = write_client_files(trustme.CA(), tmp_path / "other")  # a CA that did not sign the broker
            wrong_ca = WorkerProcess(
                terminator.address, prefix, tmp_path, security_protocol="SSL", ssl_cafile=untrusted["cafile"]
            )
            refused = run_worker(wrong_ca.env)
            assert refused.returncode == 5, refused.stdout + refused.stderr
            assert "cannot connect to Kafka" in refused.stderr
            assert "QCAT_SSL_CAFILE" in refused.stderr

            no_client_cert = WorkerProcess(
                terminator.address, prefix, tmp_path, security_protocol="SSL", ssl_cafile=files["cafile"]
            )
            refused = run_worker(no_client_cert.env)
            assert refused.returncode == 5, refused.stdout + refused.stderr
            assert "cannot connect to Kafka" in refused.stderr
        finally:
            terminator.stop()


def test_wrong_sasl_credentials_stop_the_worker_with_a_clear_error(tmp_path: Path) -> None:
    password = "hunter2-not-for-logs"
    with EmbeddedBroker(extra_args=("--authentication",)) as broker:
        worker = WorkerProcess(
            broker.address,
            unique("t-sasl"),
            tmp_path,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="alice",
            sasl_password=password,
        )
        refused = run_worker(worker.env)
        assert refused.returncode == 5, refused.stdout + refused.stderr
        output = refused.stdout + refused.stderr
        assert "SCRAM-SHA-512 as 'alice'" in output
        assert "QCAT_SASL_PASSWORD" in output
        assert password not in output

        anonymous = run_worker(WorkerProcess(broker.address, unique("t-anon"), tmp_path).env)
        assert anonymous.returncode == 5
        assert "cannot connect to Kafka" in anonymous.stderr


def test_the_web_endpoints_listen_on_loopback_and_expose_only_qcat_s_pages(broker: str, tmp_path: Path) -> None:
    """By default the web server binds 127.0.0.1 (containers set QCAT_WEB_HOST=0.0.0.0); Faust's /router/ (host
    names) and /table/ pages are off; qcat's pages answer."""
    worker = WorkerProcess(broker, unique("t-web"), tmp_path).start()
    try:
        listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
        port = f"{worker.web_port:04X}"
        local = {line.split()[1] for line in listening if line.split()[1].endswith(f":{port}")}
        assert local == {f"0100007F:{port}"}, local
        for page in ("/router/", "/table/"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                worker.get(page)
            missing.value.close()
            assert missing.value.code == 404
        assert json.loads(worker.get("/readyz"))["ready"] is True
    finally:
        worker.stop()
