"""The built wheel is the whole product: installed into an isolated environment, offline, it
serves the page, its static ES modules, Plotly.js and /healthz from any working directory.

The wheel is built from a copy of the sources (nothing is written into the checkout), with
``--no-build-isolation --no-index``; it is installed with ``--no-index --no-deps`` into a fresh
virtual environment that has no pip and no access to the checkout, whose only view of the test
environment is a ``.pth`` line naming its site-packages (for the dependencies: torch, fastapi,
...). Nothing touches the network.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "app", "losscore", "static", "templates")
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(work / "dist"), str(src)], env={**os.environ, **OFFLINE})
    (built,) = (work / "dist").glob("losslab-*.whl")
    return built


def test_the_wheel_carries_every_subpackage_and_the_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    web = {f"losslab_web/{path}" for path in _tree(ROOT / "app")}
    core = {f"losscore/{path}" for path in _tree(ROOT / "losscore")}  # the code and its data (lesson_data/*.json)
    page = ({f"losslab_web/static/{path}" for path in _tree(ROOT / "static")}
            | {f"losslab_web/templates/{path}" for path in _tree(ROOT / "templates")})
    for wanted, what in ((web, "web layer"), (core, "library"), (page, "page")):
        assert not wanted - names, f"{what} files missing from the wheel: {sorted(wanted - names)[:10]}"
    assert any(n.startswith("losslab_web/routers/") for n in names)
    assert not [n for n in names if n.startswith("app/")], "no top-level package named app"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "losslab = losslab_web.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_the_installed_wheel_serves_the_whole_product_offline_from_any_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies come from the test environment; the checkout and its editable install do not
    # (a path line in a .pth adds only that folder: the test environment's own .pth files are not read)
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "losslab-test-deps.pth").write_text("\n".join(sorted(shared)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
          str(wheel)], env={**os.environ, **OFFLINE})

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LOSSLAB_") and key not in ("PYTHONPATH", "PYTHONHOME", "PORT")}
    env.update(OFFLINE, LOSSLAB_WARMUP="0", HOME=str(elsewhere))
    where = _run([str(python), "-c", "import losslab_web, losscore, importlib.util as u; "
                                     "print(losslab_web.__file__); print(losscore.__file__); "
                                     "print(u.find_spec('app'))"], cwd=elsewhere, env=env).stdout.split()
    assert all(path.startswith(str(venv)) for path in where[:2]), where
    assert where[2] == "None", "the wheel must not install a top-level package named app"

    port = _free_port()  # given as PORT, as hosted container platforms do (the image runs `losslab serve`)
    server = subprocess.Popen([str(venv / "bin" / "losslab"), "serve", "--log-level", "warning"],
                              cwd=elsewhere, env={**env, "PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"losslab serve exited:\n{server.stdout.read()[-4000:]}"
            try:
                if _get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no /healthz within 120 s"
            time.sleep(0.3)
        status, _, page = _get(base + "/")
        assert status == 200 and b'type="module"' in page and b"/vendor/plotly.min.js" in page
        status, headers, module = _get(base + "/static/js/main.js")
        assert status == 200 and "javascript" in headers["content-type"] and b"import" in module
        status, _, plotly = _get(base + "/vendor/plotly.min.js")
        assert status == 200 and len(plotly) > 1_000_000
        status, _, health = _get(base + "/healthz")
        assert status == 200 and b'"status":"ok"' in health
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
