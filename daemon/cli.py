"""The ``luckystack`` command line.

``run``          stack an existing folder (batch rerun), frames in natural order
``watch``        watch a capture folder and stack frames as they arrive
``demo``         simulate a capture session and stack it (no telescope needed)
``check-config`` validate a config file and print the effective settings
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# OpenCV reads its decoder size limit once, when cv2 is imported (by the
# imports below): refuse what read_frame's header checks would refuse, as a
# second line of defence against decompression bombs. A user's setting wins.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "100000000")  # frames.MAX_PIXELS

from loguru import logger

from luckystack.core.errors import FrameError
from luckystack.daemon.config import PRESETS, ConfigError, Settings, load_settings, pipeline_params
from luckystack.daemon.logs import configure_logging
from luckystack.daemon.progress import ProgressBar
from luckystack.daemon.session import OUTPUT_NAMES, Session, default_output_dir, ser_output_dir
from luckystack.daemon.sources import FrameLoader, FrameRef, is_ser, prefetch

__all__ = ["main", "build_parser", "run_batch", "run_all", "frame_loader"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luckystack",
        description="Live lucky-imaging stacker for planetary astrophotography.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
        p.add_argument("--output", type=Path, metavar="DIR",
                       help="output folder (default: INPUT_luckystack beside INPUT)")
        p.add_argument("--preset", choices=PRESETS, help="pipeline preset (overrides the config)")
        p.add_argument("--log-level", metavar="LEVEL", help="override [logging] level")

    p_run = sub.add_parser("run", help="stack the frames already in a folder or a SER video")
    p_run.add_argument("input", type=Path, metavar="INPUT",
                       help="folder of frames, or one file (a SER video, a FITS or image frame)")
    common(p_run)

    p_watch = sub.add_parser("watch", help="watch a capture folder and stack frames live")
    p_watch.add_argument("input", type=Path, metavar="INPUT", help="capture folder")
    common(p_watch)

    p_demo = sub.add_parser("demo", help="simulate a capture session and stack it")
    p_demo.add_argument("dir", type=Path, nargs="?", default=Path("luckystack-demo"),
                        metavar="DIR", help="where to write the session (default: ./luckystack-demo)")
    p_demo.add_argument("--frames", type=int, default=100, help="number of frames (default 100)")
    p_demo.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    common(p_demo)

    p_check = sub.add_parser("check-config", help="validate a config and print the effective settings")
    p_check.add_argument("config_file", type=Path, nargs="?", metavar="FILE")
    p_check.add_argument("--preset", choices=PRESETS)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "preset", None):
        overrides["preset"] = args.preset
    path = getattr(args, "config", None) or getattr(args, "config_file", None)
    return load_settings(path, **overrides)


def _setup_logging(settings: Settings, args: argparse.Namespace) -> None:
    level = getattr(args, "log_level", None) or settings.logging.level
    configure_logging(
        level=level.upper(),
        json_file=settings.logging.json_file,
        rotation=settings.logging.rotation,
        retention=settings.logging.retention,
    )


def _output_dir(args: argparse.Namespace, settings: Settings, input_path: Path) -> Path:
    if getattr(args, "output", None):
        return args.output
    if settings.output.folder is not None:
        return settings.output.folder
    return default_output_dir(input_path)


def frame_loader(settings: Settings, root: Path | None = None) -> FrameLoader:
    """A :class:`FrameLoader` configured by ``[input]``; confined to ``root``
    unless ``[watch] follow_symlinks``."""
    confine = None if settings.watch.follow_symlinks else root
    return FrameLoader(settings.input.bayer_pattern, settings.input.debayer_method,
                       confine_to=confine)


def run_all(input_path: Path, output_dir: Path, settings: Settings, *, stream=None) -> list[Session]:
    """Stack everything already in ``input_path``; return the sessions.

    A folder: its single-frame files in natural order into ``output_dir``
    (skipped when the folder holds only SER videos), then each SER video into
    its own ``output_dir/<stem>``. One file: into ``output_dir`` itself (a SER
    video frame by frame). Frames already in a session's CSV are skipped.
    """
    from luckystack.daemon.watcher import list_existing_frames, list_unusable_entries, natural_key

    input_path = Path(input_path)
    loader = frame_loader(settings, input_path if input_path.is_dir() else None)
    params = pipeline_params(settings)
    wc = settings.output.write_comparison
    sessions: list[Session] = []
    try:
        if input_path.is_file():
            root = input_path.parent
            session = Session(params, root, output_dir, write_comparison=wc, loader=loader,
                              output_inside_ok=True)
            if is_ser(input_path):
                _run_ser(session, input_path, stream)
            else:
                _run_files(session, [input_path], stream)
            return [session]
        if not input_path.is_dir():
            raise FileNotFoundError(f"input folder not found: {input_path}")
        w = settings.watch
        found = list_existing_frames(
            input_path, recursive=w.recursive, suffixes=w.suffixes,
            follow_symlinks=w.follow_symlinks,
        )
        sers = [f for f in found if is_ser(f)]
        # Entries named like frames that are no usable file get their row too, as in `watch`.
        unusable = list_unusable_entries(input_path, recursive=w.recursive, suffixes=w.suffixes,
                                         follow_symlinks=w.follow_symlinks)
        files = sorted([f for f in found if not is_ser(f)] + unusable,
                       key=lambda p: natural_key(p.relative_to(input_path)))
        if files or not sers:
            session = Session(params, input_path, output_dir, write_comparison=wc, loader=loader)
            _run_files(session, files, stream)
            sessions.append(session)
        for ser in sers:
            out = ser_output_dir(output_dir, input_path, ser)
            session = Session(params, input_path, out, write_comparison=wc, loader=loader)
            _run_ser(session, ser, stream)
            sessions.append(session)
        return sessions
    finally:
        loader.close()


def run_batch(input_path: Path, output_dir: Path, settings: Settings, *, stream=None) -> Session:
    """Like :func:`run_all`; returns the first session (the folder's, if any)."""
    return run_all(input_path, output_dir, settings, stream=stream)[0]


def _run_files(session: Session, frames: list[Path], stream) -> None:
    with session:
        todo = [f for f in frames if not session.is_done(f)]
        if len(todo) < len(frames):
            logger.info("{} of {} frames already in the CSV; skipping them",
                        len(frames) - len(todo), len(frames))
        bar = ProgressBar(len(todo), stream=stream)
        for path, loaded in prefetch(session.load, todo):
            rec = session.process(path, loaded)
            bar.update(note=f"{rec.file} {rec.outcome}")
        bar.close()
        session.write_outputs()


def _run_ser(session: Session, ser: Path, stream) -> None:
    loader = session.loader
    with session:
        n = loader.ser_available(ser)
        try:
            note = loader.ser_reader(ser).truncation_message()
        except FrameError as err:  # not even a complete header
            note = f"{ser.name}: {err}"
        if note:
            logger.warning("{}", note)
        start = session.next_index(ser)
        todo = [FrameRef(ser, i) for i in range(n)
                if i >= start and not session.is_done(FrameRef(ser, i))]
        if len(todo) < n:
            logger.info("{}: {} of {} frames already in the CSV; skipping them",
                        ser.name, n - len(todo), n)
        logger.info("{}: {} frames -> {}", ser.name, len(todo), session.output_dir)
        bar = ProgressBar(len(todo), stream=stream)
        for ref in todo:
            rec = session.process(ref)
            bar.update(note=f"{rec.file} {rec.outcome}")
        bar.close()
        session.write_outputs()
    loader.forget(ser)


def _summary(sessions: list[Session], elapsed: float) -> str:
    processed = sum(s.stats.processed for s in sessions)
    accepted = sum(s.stats.accepted for s in sessions)
    rejected = sum(s.stats.rejected for s in sessions)
    below_cut = sum(s.stats.below_cut for s in sessions)
    lines = [
        f"processed {processed} frames in {elapsed:.1f} s "
        f"({processed / max(elapsed, 1e-9):.1f} frames/s): "
        f"{accepted} accepted, {rejected} rejected"
        + (f" ({below_cut} below the lucky cut)" if below_cut else ""),
    ]
    for session in sessions:
        s = session.stats
        out = session.output_dir
        lines.append(f"outputs in {out}:")
        for key in ("stacked", "sharpened", "comparison", "csv"):
            path = out / OUTPUT_NAMES[key]
            if path.exists():
                lines.append(f"  {path}")
        if s.processed and not s.accepted and not session.stacker.stack_size:
            lines.append("no frame was usable: see the reasons in crops.csv")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    start = time.monotonic()
    output = _output_dir(args, settings, args.input)
    sessions = run_all(args.input, output, settings)
    print(_summary(sessions, time.monotonic() - start))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from luckystack.daemon.demo import write_demo_session

    capture = args.dir / "capture"
    print(f"simulating a {args.frames}-frame capture session in {capture} ...")
    write_demo_session(capture, n_frames=args.frames, seed=args.seed)
    output = args.output or (args.dir / "output")
    start = time.monotonic()
    sessions = run_all(capture, output, settings)
    print(_summary(sessions, time.monotonic() - start))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from luckystack.daemon.service import run_watch

    output = _output_dir(args, settings, args.input)
    return run_watch(args.input, output, settings, config_path=args.config, preset=args.preset)


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "watch": cmd_watch,
    "demo": cmd_demo,
    "check-config": cmd_check_config,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``luckystack`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as err:
        print(f"luckystack: {err}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(settings, args)
    try:
        return COMMANDS[args.command](args, settings)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        logger.error("{}", err)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return 130
    except Exception:
        logger.exception("unexpected error")
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
