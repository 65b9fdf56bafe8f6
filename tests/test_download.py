"""Download stage: local archive / extracted batches without network, HTTP
download from a local server, TLS checked (self-signed certificate refused),
offline error within seconds, checksum errors, --no-verify, safe extraction."""

from __future__ import annotations

import contextlib
import datetime
import functools
import gzip
import http.server
import io
import ipaddress
import socket
import ssl
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from alexnet_pipeline.config import CIFAR10_MD5
from alexnet_pipeline.download import ARCHIVE_NAME, BATCH_FILES, BATCHES_DIR_NAME, ensure_cifar10
from alexnet_pipeline.errors import DataError
from tests.cifar_archive import write_tar_gz
from tests.conftest import run_cli
from tests.fixtures import md5_of


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy configured on the CI machine must not intercept 127.0.0.1.
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens there now: connecting is refused at once.
    return f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def serve_folder(folder: Path, tls: tuple[Path, Path] | None = None):
    """Serve `folder` over HTTP (or HTTPS with (cert, key)) on 127.0.0.1; yields
    (base_url, list of requested paths)."""
    handler = type("Handler", (_QuietHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        # A refused handshake is expected in these tests; keep stderr clean.
        server.handle_error = lambda *args: None
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (no CA vouches for it)."""
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key_path), "-out", str(cert_path), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def assert_batches_complete(batches_dir: Path) -> None:
    assert batches_dir.name == BATCHES_DIR_NAME
    assert sorted(p.name for p in batches_dir.iterdir()) == sorted(BATCH_FILES)


def leftovers(data_dir: Path) -> list[str]:
    """Temporary files or folders a failed step left behind."""
    return [p.name for p in data_dir.iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]


# --- local copies: no network at all ---------------------------------------------


def test_local_archive_is_verified_and_extracted_without_network(cifar_data_dir):
    archive = cifar_data_dir / ARCHIVE_NAME
    batches = ensure_cifar10(cifar_data_dir, url=closed_port_url(), md5=md5_of(archive), progress=False)
    assert batches == cifar_data_dir / BATCHES_DIR_NAME
    assert_batches_complete(batches)
    assert archive.is_file()  # kept: a later re-extraction needs no download
    assert leftovers(cifar_data_dir) == []


def test_extracted_batches_are_used_as_they_are(cifar_data_dir):
    ensure_cifar10(cifar_data_dir, url=closed_port_url(), verify=False, progress=False)
    (cifar_data_dir / ARCHIVE_NAME).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (cifar_data_dir / BATCHES_DIR_NAME).iterdir()}
    # Wrong MD5 and a dead URL: neither is consulted when the batches are there.
    batches = ensure_cifar10(cifar_data_dir, url=closed_port_url(), md5="0" * 32, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in batches.iterdir()} == before


def test_incomplete_batches_folder_is_replaced_from_the_archive(cifar_data_dir):
    batches = ensure_cifar10(cifar_data_dir, verify=False, progress=False)
    (batches / "data_batch_3").unlink()
    (batches / "stray").write_text("left over")
    ensure_cifar10(cifar_data_dir, url=closed_port_url(), verify=False, progress=False)
    assert_batches_complete(batches)


# --- checksums ----------------------------------------------------------------------


def test_checksum_mismatch_names_both_checksums(cifar_data_dir):
    archive = cifar_data_dir / ARCHIVE_NAME
    actual = md5_of(archive)
    assert actual != CIFAR10_MD5  # the fixture is not the official archive
    with pytest.raises(DataError) as err:
        ensure_cifar10(cifar_data_dir, progress=False)
    message = str(err.value)
    assert CIFAR10_MD5 in message and actual in message and "--no-verify" in message
    assert not (cifar_data_dir / BATCHES_DIR_NAME).exists()
    assert archive.is_file()  # the user's file is not deleted behind their back


def test_no_verify_accepts_a_modified_copy(cifar_data_dir):
    batches = ensure_cifar10(cifar_data_dir, verify=False, progress=False)
    assert_batches_complete(batches)


# --- network: offline, plain HTTP, TLS ---------------------------------------------


def test_offline_fails_within_seconds_saying_where_to_put_the_archive(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = closed_port_url()
    started = time.monotonic()
    with pytest.raises(DataError) as err:
        ensure_cifar10(data_dir, url=url, progress=False)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert url in message
    assert f"put {ARCHIVE_NAME}" in message and str(data_dir.resolve()) in message
    assert BATCHES_DIR_NAME in message
    assert list(data_dir.iterdir()) == []  # no partial download left behind


def test_download_from_a_local_http_server(cifar_archive_dir, tmp_path):
    data_dir = tmp_path / "data"
    expected_md5 = md5_of(cifar_archive_dir / ARCHIVE_NAME)
    with serve_folder(cifar_archive_dir) as (base, requests):
        batches = ensure_cifar10(data_dir, url=f"{base}/{ARCHIVE_NAME}", md5=expected_md5, progress=False)
        assert requests == [f"/{ARCHIVE_NAME}"]
        assert_batches_complete(batches)
        assert md5_of(data_dir / ARCHIVE_NAME) == expected_md5
        assert leftovers(data_dir) == []
        # The next call finds the batches and asks the server for nothing.
        ensure_cifar10(data_dir, url=f"{base}/{ARCHIVE_NAME}", md5=expected_md5, progress=False)
        assert len(requests) == 1


def test_downloaded_file_with_wrong_checksum_is_reported(cifar_archive_dir, tmp_path):
    data_dir = tmp_path / "data"
    with serve_folder(cifar_archive_dir) as (base, _), pytest.raises(DataError, match="checksum mismatch") as err:
        ensure_cifar10(data_dir, url=f"{base}/{ARCHIVE_NAME}", md5="f" * 32, progress=False)
    assert "f" * 32 in str(err.value) and md5_of(cifar_archive_dir / ARCHIVE_NAME) in str(err.value)


def test_http_404_is_a_download_error(cifar_archive_dir, tmp_path):
    with serve_folder(cifar_archive_dir) as (base, _), pytest.raises(DataError, match="could not download"):
        ensure_cifar10(tmp_path / "data", url=f"{base}/missing.tar.gz", progress=False)


def test_tls_certificate_is_checked(cifar_archive_dir, tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    expected_md5 = md5_of(cifar_archive_dir / ARCHIVE_NAME)
    with serve_folder(cifar_archive_dir, tls=(cert, key)) as (base, requests):
        assert base.startswith("https://")
        with pytest.raises(DataError) as err:
            ensure_cifar10(tmp_path / "refused", url=f"{base}/{ARCHIVE_NAME}", md5=expected_md5, progress=False)
        assert "certificate verify failed" in str(err.value).lower()
        assert requests == []  # refused during the handshake, before any request
        assert not (tmp_path / "refused" / ARCHIVE_NAME).exists()

        # Control: the same server is fine once its certificate is trusted, so
        # the refusal above was the certificate check and nothing else.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        batches = ensure_cifar10(tmp_path / "trusted", url=f"{base}/{ARCHIVE_NAME}", md5=expected_md5, progress=False)
        assert_batches_complete(batches)


# --- safe extraction -------------------------------------------------------------------


def _archive_with(data_dir: Path, cifar_archive_dir: Path, extra: list[tarfile.TarInfo], payload: bytes = b"x") -> Path:
    """The fixture archive's members plus `extra` (written after them)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / ARCHIVE_NAME
    with tarfile.open(cifar_archive_dir / ARCHIVE_NAME) as src, tarfile.open(archive, "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        for info in extra:
            if info.isreg():
                info.size = len(payload)
                dst.addfile(info, io.BytesIO(payload))
            else:
                dst.addfile(info)
    return archive


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-dotdot", "symlink-absolute", "through-symlink"])
def test_unsafe_members_are_refused(kind, cifar_archive_dir, tmp_path):
    data_dir = tmp_path / "box" / "data"
    outside = tmp_path / "escaped.txt"
    members = {
        # Relative to the extraction folder (data/.extract-*/): lands in tmp_path.
        "dotdot": [tarfile.TarInfo("cifar-10-batches-py/../../../../escaped.txt")],
        "absolute": [tarfile.TarInfo(str(outside))],
        "symlink-dotdot": [_symlink("cifar-10-batches-py/link", "../../../../escaped.txt")],
        "symlink-absolute": [_symlink("cifar-10-batches-py/link", str(outside))],
        "through-symlink": [_symlink("cifar-10-batches-py/up", "../../.."), tarfile.TarInfo("cifar-10-batches-py/up/escaped.txt")],
    }[kind]
    _archive_with(data_dir, cifar_archive_dir, members)
    with pytest.raises(DataError, match="refusing to extract") as err:
        ensure_cifar10(data_dir, verify=False, progress=False)
    assert repr(members[0].name) in str(err.value)
    assert not outside.exists() and not outside.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"]
    # Nothing half-extracted stays behind either.
    assert sorted(p.name for p in data_dir.iterdir()) == [ARCHIVE_NAME]


def test_truncated_archive_gives_a_clear_error(cifar_archive_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    whole = (cifar_archive_dir / ARCHIVE_NAME).read_bytes()
    (data_dir / ARCHIVE_NAME).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:
        ensure_cifar10(data_dir, verify=False, progress=False)
    message = str(err.value)
    assert "truncated" in message and str(data_dir / ARCHIVE_NAME) in message
    assert sorted(p.name for p in data_dir.iterdir()) == [ARCHIVE_NAME]
    # With verification on (the default), the MD5 catches it first.
    with pytest.raises(DataError, match="checksum mismatch"):
        ensure_cifar10(data_dir, md5=md5_of(cifar_archive_dir / ARCHIVE_NAME), progress=False)


def test_not_a_tar_file(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / ARCHIVE_NAME).write_text("<html>Not Found</html>")
    with pytest.raises(DataError, match="not a .tar.gz"):
        ensure_cifar10(data_dir, verify=False, progress=False)


def test_archive_without_the_batches(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_tar_gz(data_dir / ARCHIVE_NAME, {"cifar-10-batches-py/data_batch_1": b"x"})
    with pytest.raises(DataError, match="missing batches.meta"):
        ensure_cifar10(data_dir, verify=False, progress=False)


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("oops")
    with pytest.raises(DataError, match="is a file"):
        ensure_cifar10(tmp_path / "data", progress=False)


# --- the command line ----------------------------------------------------------------

CLI_ARGS = ["--dataset", "cifar10", "--weights", "none", "--epochs", "1", "--batch-size", "10",
            "--image-size", "64", "--device", "cpu"]


@pytest.mark.slow
def test_cli_offline_exits_non_zero_with_the_hint(cli_prefect_home, tmp_path):
    config = tmp_path / "offline.yaml"
    config.write_text(f"data:\n  url: {closed_port_url()}\n")
    data_dir = tmp_path / "empty-data"
    started = time.monotonic()
    result = run_cli(["--config", str(config), "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), *CLI_ARGS],
                     cwd=tmp_path, env={"no_proxy": "*", "NO_PROXY": "*", "PREFECT_HOME": str(cli_prefect_home)},
                     timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: could not download CIFAR-10" in result.stderr
    assert f"put {ARCHIVE_NAME}" in result.stderr and str(data_dir.resolve()) in result.stderr
    assert "Traceback" not in result.stderr
    # A deadline, not a measurement: start-up (imports, Prefect) is most of
    # the time and the download fails at once, while retrying downloads
    # (three attempts with back-off, as Prefect's retries would) take minutes.
    assert elapsed < 240
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_cli_checksum_mismatch_exits_non_zero(cifar_data_dir, cli_prefect_home, tmp_path):
    actual = md5_of(cifar_data_dir / ARCHIVE_NAME)
    result = run_cli(["--data-dir", str(cifar_data_dir), "--out", str(tmp_path / "run"), *CLI_ARGS],
                     cwd=tmp_path, env={"PREFECT_HOME": str(cli_prefect_home)}, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    assert CIFAR10_MD5 in error_lines[0] and actual in error_lines[0] and "--no-verify" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (cifar_data_dir / BATCHES_DIR_NAME).exists()


def test_fixture_archive_is_intact(cifar_archive_dir):
    # Guards the tests above: they copy this archive and must not modify it.
    with tarfile.open(cifar_archive_dir / ARCHIVE_NAME) as tar:
        names = sorted(m.name for m in tar.getmembers())
    assert names == sorted(f"{BATCHES_DIR_NAME}/{n}" for n in BATCH_FILES)


def test_preflight_reports_an_unreachable_server_at_once(tmp_path, cifar_data_dir):
    """Before Prefect starts, the command line checks that a needed download
    can reach its server: offline, the message comes in seconds."""
    from alexnet_pipeline.download import check_cifar10_reachable

    started = time.monotonic()
    with pytest.raises(DataError, match=r"could not download CIFAR-10 from .*put cifar-10-python.tar.gz"):
        check_cifar10_reachable(tmp_path / "empty", url=closed_port_url())
    assert time.monotonic() - started < 5
    assert not (tmp_path / "empty").exists()
    # A local archive means no download: no network check at all.
    check_cifar10_reachable(cifar_data_dir, url=closed_port_url())
    # A reachable server passes.
    with serve_folder(cifar_data_dir) as (base_url, _):
        check_cifar10_reachable(tmp_path / "empty", url=f"{base_url}/{ARCHIVE_NAME}")


# --- input limits: size, ratio, entries; a full disk; unreadable files -------------------


def _archive_of(data_dir: Path, members: list[tuple[str, int]]) -> Path:
    """cifar-10-python.tar.gz in `data_dir` holding these (name, size) files of zeros."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return write_tar_gz(data_dir / ARCHIVE_NAME, {name: bytes(size) for name, size in members})


def test_a_compression_bomb_is_refused_before_anything_is_written(tmp_path):
    """80 MiB of zeros compress to 80 kB: over 100 times (the official archive
    inflates 1.05 times). Refused from the first entry's header."""
    data_dir = tmp_path / "data"
    archive = _archive_of(data_dir, [(f"{BATCHES_DIR_NAME}/data_batch_1", 80 << 20)])
    assert archive.stat().st_size < 200_000
    with pytest.raises(DataError) as err:
        ensure_cifar10(data_dir, verify=False, progress=False)
    message = str(err.value)
    assert message.startswith(f"refusing to extract {archive}: its 0.1 MB inflate to more than 83.9 MB, over 100 times")
    assert "Delete it and run again" in message
    assert sorted(p.name for p in data_dir.iterdir()) == [ARCHIVE_NAME]


def test_an_archive_larger_than_the_cap_is_refused_from_its_headers(tmp_path):
    """The issue's case: a few MB that claim 2 GiB. Only the header is read:
    the refusal comes before the 2 GiB would be decompressed or written."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    info = tarfile.TarInfo(f"{BATCHES_DIR_NAME}/data_batch_1")
    info.size = 2 << 30
    with gzip.open(data_dir / ARCHIVE_NAME, "wb") as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1 << 20))  # the first MB of "data"
    with pytest.raises(DataError, match=r"its entries add up to more than 1,073.7 MB \(the official .* holds 178 MB\)"):
        ensure_cifar10(data_dir, verify=False, progress=False)
    assert sorted(p.name for p in data_dir.iterdir()) == [ARCHIVE_NAME]


def test_an_archive_with_too_many_entries_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    _archive_of(data_dir, [(f"{BATCHES_DIR_NAME}/f{i}", 0) for i in range(1001)])
    with pytest.raises(DataError, match=r"holds more than 1000 entries \(the official cifar-10-python.tar.gz holds 8\)"):
        ensure_cifar10(data_dir, verify=False, progress=False)
    assert sorted(p.name for p in data_dir.iterdir()) == [ARCHIVE_NAME]


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB file system (tmpfs), so that ENOSPC is the kernel's own."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount an 8 MB tmpfs here to fill a real disk (needs root with CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_an_archive_too_large_for_the_disk_is_refused_before_extracting(small_disk):
    archive = _archive_of(small_disk, [(f"{BATCHES_DIR_NAME}/data_batch_1", 12 << 20)])
    with pytest.raises(DataError) as err:
        ensure_cifar10(small_disk, verify=False, progress=False)
    message = str(err.value)
    assert message.startswith(f"not enough disk space: extracting {archive} needs 12.6 MB and the disk holding "
                              f"{small_disk} has ")
    assert "--data-dir on a disk with room" in message and "truncated" not in message
    assert sorted(p.name for p in small_disk.iterdir()) == [ARCHIVE_NAME]


def test_a_disk_that_fills_up_during_extraction_says_so_not_truncated(small_disk, monkeypatch):
    """As if another process took the space after the check: the kernel's
    ENOSPC mid-extraction used to read 'it is truncated or not a .tar.gz'."""
    import alexnet_pipeline.download as download_module

    real_free = download_module._free_bytes
    answers = iter([1 << 40])  # the check before extracting sees room; later calls the truth
    monkeypatch.setattr(download_module, "_free_bytes", lambda folder: next(answers, None) or real_free(folder))
    archive = _archive_of(small_disk, [(f"{BATCHES_DIR_NAME}/data_batch_1", 12 << 20)])
    with pytest.raises(DataError) as err:
        ensure_cifar10(small_disk, verify=False, progress=False)
    message = str(err.value)
    assert message.startswith(f"the disk is full: extracting {archive} failed (No space left on device); "
                              "its contents take 12.6 MB, ")
    assert "free there now" in message and "truncated" not in message
    assert sorted(p.name for p in small_disk.iterdir()) == [ARCHIVE_NAME]  # the partial extraction is gone


def test_a_download_that_fills_the_disk_says_so_not_offline(small_disk, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / ARCHIVE_NAME).write_bytes(bytes(12 << 20))
    with serve_folder(served) as (base, _):
        url = f"{base}/{ARCHIVE_NAME}"
        with pytest.raises(DataError) as err:
            ensure_cifar10(small_disk, url=url, progress=False)
    message = str(err.value)
    assert message.startswith(f"the disk is full: downloading {url} to {small_disk / ARCHIVE_NAME} failed "
                              "(No space left on device); the official archive is 170.5 MB")
    assert "offline" not in message
    assert list(small_disk.iterdir()) == []  # the partial download is removed


def test_an_unreadable_archive_is_named(cifar_data_dir):
    """A real permission error (capabilities dropped, see conftest), with and
    without the checksum (which reads it first)."""
    from tests.conftest import run_python_with_permissions_enforced

    archive = cifar_data_dir / ARCHIVE_NAME
    archive.chmod(0)
    code = ("import sys\nfrom alexnet_pipeline.download import ensure_cifar10\n"
            "from alexnet_pipeline.errors import DataError\n"
            "for verify in (True, False):\n"
            "    try:\n        ensure_cifar10(sys.argv[1], verify=verify, progress=False)\n"
            "    except DataError as exc:\n        print(exc)\n")
    proc = run_python_with_permissions_enforced(code, str(cifar_data_dir))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    expected = f"cannot read {archive} (Permission denied); check its permissions, or delete it to download it again"
    assert proc.stdout.splitlines() == [expected, expected]


def test_a_data_dir_that_is_a_file_is_not_reported_as_offline(tmp_path):
    """The check before Prefect starts said 'could not download' for it."""
    from alexnet_pipeline.download import check_cifar10_reachable

    (tmp_path / "data").write_text("oops")
    with pytest.raises(DataError, match=r"--data-dir .*/data is a file, not a folder"):
        check_cifar10_reachable(tmp_path / "data", url=closed_port_url())


def test_extracted_batches_are_checked_against_the_official_md5s(cifar_data_dir, monkeypatch):
    """--verify means something once the archive is extracted: batch files
    already in the data folder are checked file by file against the MD5s
    torchvision lists for the official archive (these generated ones are not
    official, so they are refused with what to do); --no-verify uses them."""
    from alexnet_pipeline import download as download_module

    batches = ensure_cifar10(cifar_data_dir, verify=False, progress=False)
    with pytest.raises(DataError) as err:
        ensure_cifar10(cifar_data_dir, url=closed_port_url(), progress=False)
    message = str(err.value)
    assert "data_batch_1" in message and "official CIFAR-10" in message and "--no-verify" in message
    assert ensure_cifar10(cifar_data_dir, url=closed_port_url(), verify=False, progress=False) == batches

    # With the official list matching these files, the same call goes through;
    # one file changed afterwards is named.
    official = {name: md5_of(batches / name) for name in download_module.BATCH_FILES}
    monkeypatch.setattr(download_module, "official_batch_md5s", lambda: official)
    assert ensure_cifar10(cifar_data_dir, url=closed_port_url(), progress=False) == batches
    with open(batches / "test_batch", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match=r"^test_batch in .* differ from the official"):
        ensure_cifar10(cifar_data_dir, url=closed_port_url(), progress=False)
