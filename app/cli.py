"""``losslab``: serve the app, explain a scene to a trace file, verify a trace, write an HTML report.

    losslab serve [--host 127.0.0.1] [--port 8000] [--workers 1]
    losslab explain scene.json [-o trace.json] [--device cpu]
    losslab verify trace.json [--device cpu]        # exit 0: every tensor matches, 1: not
    losslab report scene.json -o report.html

``explain`` writes the same document as ``POST /api/v1/export``; ``scene.json`` is the body of
``POST /api/v1/explain`` (docs/api-contract.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from losscore.scene import Scene

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A problem to report in one line (bad file, invalid scene); exit code ``EXIT_USAGE``."""


def _read_json(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not valid JSON ({exc})") from exc


def _format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "scene"


def load_scene(path: str, device: str | None = None) -> Scene:
    """Read a scene file through the same request model as the API."""
    from .schemas import SceneIn

    body = _read_json(path)
    if isinstance(body, dict) and device is not None:
        body = {**body, "device": device}
    try:
        return SceneIn.model_validate(body).to_scene()
    except ValidationError as exc:
        problems = "; ".join(f"{_format_loc(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CliError(f"{path}: invalid scene: {problems}") from exc


def _run(scene: Scene):
    from .errors import SceneError
    from .serialize import run

    try:
        return run(scene)
    except SceneError as exc:
        raise CliError(f"invalid scene: {_format_loc(exc.loc)}: {exc.message}") from exc


def _write(path: str | None, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    else:
        Path(path).write_bytes(data)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    serve(args.host, args.port, args.workers, args.log_level)  # uvicorn with the limits of app/server.py
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from losscore.export import build_export, lazy_data

    from .serialize import iter_json

    run = _run(load_scene(args.scene, args.device))
    with lazy_data():  # written piece by piece: any size, without the whole text in memory
        pieces = iter_json(build_export(run, arrays=True))
        if args.output in (None, "-"):
            for piece in pieces:
                sys.stdout.buffer.write(piece)
            sys.stdout.buffer.write(b"\n")
            sys.stdout.flush()
        else:
            with open(args.output, "wb") as out:
                for piece in pieces:
                    out.write(piece)
    if args.output not in (None, "-"):
        total = run.result.losses.get("total")
        print(f"wrote {args.output}: {run.scene.scheme}, {len(run.scene.boxes)} boxes, "
              f"{len(run.trace)} stages, total loss {float(total) if total is not None else 'n/a'}",
              file=sys.stderr)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from losscore.verify import verify_export

    doc = _read_json(args.trace)
    try:
        report = verify_export(doc, device=args.device)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"{args.trace}: cannot verify: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    if report.ok:
        print(f"OK: {report.checked} items recomputed on {report.device} and all match")
        return EXIT_OK
    print(f"MISMATCH: {len(report.mismatches)} of {report.checked} items differ (recomputed on {report.device})")
    for mismatch in report.mismatches[:50]:
        print(f"  {mismatch.where}: {mismatch.problem}")
    if len(report.mismatches) > 50:
        print(f"  ... and {len(report.mismatches) - 50} more")
    return EXIT_MISMATCH


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render_report

    run = _run(load_scene(args.scene, args.device))
    html = render_report(run)
    _write(args.output, html)
    if args.output not in (None, "-"):
        print(f"wrote {args.output} ({len(html) / 1e6:.1f} MB, self-contained)", file=sys.stderr)
    return EXIT_OK


def _default_port() -> int:
    return int(os.environ.get("LOSSLAB_PORT") or os.environ.get("PORT") or "8000")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="losslab", description="LossLab: label assignment and losses, exactly.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the web app and API (uvicorn)")
    serve.add_argument("--host", default=os.environ.get("LOSSLAB_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=_default_port(),
                       help="default: $LOSSLAB_PORT, else $PORT (set by hosted container platforms), else 8000")
    serve.add_argument("--workers", type=int, default=int(os.environ.get("LOSSLAB_WORKERS", "1")))
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    explain = sub.add_parser("explain", help="compute a scene and write its full trace (as POST /api/v1/export)")
    explain.add_argument("scene", help="scene JSON file (the body of POST /api/v1/explain), or - for stdin")
    explain.add_argument("-o", "--output", help="trace file to write (default: stdout)")
    explain.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the scene's device")
    explain.set_defaults(func=cmd_explain)

    verify = sub.add_parser("verify", help="recompute a trace's scene and compare every tensor (exit 0/1)")
    verify.add_argument("trace", help="trace JSON file written by `losslab explain` or /api/v1/export")
    verify.add_argument("--device", choices=["auto", "cpu", "cuda"], help="recompute on this device")
    verify.set_defaults(func=cmd_verify)

    report = sub.add_parser("report", help="write one self-contained offline HTML report of a scene")
    report.add_argument("scene", help="scene JSON file")
    report.add_argument("-o", "--output", required=True, help="HTML file to write")
    report.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the scene's device")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"losslab {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
