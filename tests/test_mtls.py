"""Mutual TLS: with ``PIXELRPC_TLS_CLIENT_CA`` the server requires a client certificate signed by that CA.

The certificates (a CA, the server's, a client's, and a client of another CA) are made here with the
``openssl`` command line, EC keys so that it takes milliseconds.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pixelrpc.cli import cli
from pixelrpc.clients import Client, ServiceClient, TLSConfig
from pixelrpc.clients.errors import Unavailable
from pixelrpc.services.server import create_server
from pixelrpc.services.settings import Settings
from pixelrpc.services.testing import running_server

FAST = Settings(shutdown_delay=0.0, registry_refresh_seconds=0.2)
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    openssl("req", "-x509", *EC, "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, cert


def issue(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    """A key and a certificate for ``name`` signed by ``ca`` (its key, its certificate)."""
    key, csr, cert, ext = (folder / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(extensions)
    openssl("req", "-new", *EC, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
            "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "test-ca")
    other_ca = make_ca(folder, "other-ca")
    server = issue(folder, "server", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                         "extendedKeyUsage=serverAuth\n")
    client = issue(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    stranger = issue(folder, "stranger", other_ca, "extendedKeyUsage=clientAuth\n")
    return {"ca": ca[1], "server_key": server[0], "server_cert": server[1], "client_key": client[0],
            "client_cert": client[1], "stranger_key": stranger[0], "stranger_cert": stranger[1]}


@pytest.fixture(scope="module")
def server(pki, tmp_path_factory):
    settings = FAST.replace(tls_cert=str(pki["server_cert"]), tls_key=str(pki["server_key"]),
                            tls_client_ca=str(pki["ca"]))
    with running_server(["captioning"], settings, registry=str(tmp_path_factory.mktemp("reg"))) as srv:
        yield srv


def test_a_client_with_a_certificate_of_the_ca_is_served(server, pki):
    tls = TLSConfig(ca=str(pki["ca"]), cert=str(pki["client_cert"]), key=str(pki["client_key"]))
    with ServiceClient(server.address, tls=tls) as client:
        assert client.server_info().tls
        assert client.health() == "SERVING"
    # PEM bytes work as well as paths
    tls = TLSConfig(ca=pki["ca"].read_bytes(), cert=pki["client_cert"].read_bytes(),
                    key=pki["client_key"].read_bytes())
    with ServiceClient(server.address, tls=tls) as client:
        assert client.registry.list() == []


def test_a_client_without_a_certificate_is_refused_at_the_handshake(server, pki):
    with ServiceClient(server.address, tls=TLSConfig(ca=str(pki["ca"])), timeout=3) as client:
        with pytest.raises(Unavailable):
            client.server_info()
        with pytest.raises(Unavailable):  # health checks too: the handshake comes before any RPC
            client.health(timeout=3)


def test_a_client_certificate_of_another_ca_is_refused(server, pki):
    tls = TLSConfig(ca=str(pki["ca"]), cert=str(pki["stranger_cert"]), key=str(pki["stranger_key"]))
    with ServiceClient(server.address, tls=tls, timeout=3) as client, pytest.raises(Unavailable):
        client.server_info()


def test_the_client_environment_variables_configure_mutual_tls(server, pki, monkeypatch):
    env = {"PIXELRPC_TLS_CA": str(pki["ca"]), "PIXELRPC_TLS_CLIENT_CERT": str(pki["client_cert"]),
           "PIXELRPC_TLS_CLIENT_KEY": str(pki["client_key"])}
    assert TLSConfig.from_env(env) == TLSConfig(ca=env["PIXELRPC_TLS_CA"], cert=env["PIXELRPC_TLS_CLIENT_CERT"],
                                                key=env["PIXELRPC_TLS_CLIENT_KEY"])
    assert TLSConfig.from_env({}) is None
    with pytest.raises(ValueError, match="together"):
        TLSConfig.from_env({"PIXELRPC_TLS_CLIENT_CERT": env["PIXELRPC_TLS_CLIENT_CERT"]})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with Client.from_env(captioning=server.address) as client:
        assert client.captioning.server_info().tls
    result = CliRunner().invoke(cli, ["health", "--addr", server.address], env=env)
    assert result.exit_code == 0 and "SERVING" in result.output, result.output
    result = CliRunner().invoke(cli, ["health", "--addr", server.address, "--timeout", "3"],
                                env={**env, "PIXELRPC_TLS_CLIENT_CERT": "", "PIXELRPC_TLS_CLIENT_KEY": ""})
    assert result.exit_code != 0 and "UNAVAILABLE" in result.output


def test_a_client_ca_without_a_server_certificate_is_a_configuration_error(pki, tmp_path):
    settings = FAST.replace(tls_client_ca=str(pki["ca"]), registry=str(tmp_path))
    with pytest.raises(ValueError, match="PIXELRPC_TLS_CLIENT_CA"):
        asyncio.run(create_server(["captioning"], settings))
