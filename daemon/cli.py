"""The ``luckystack`` command line.

``run``          stack an existing folder (batch rerun), frames in natural order
``watch``        watch a capture folder and stack frames as they arrive
``demo``         simulate a capture session and stack it (no telescope needed)
``check-config`` validate a config file and print the effective settings
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loguru import logger

from luckystack.daemon.config import PRESETS, ConfigError, Settings, load_settings, pipeline_params
from luckystack.daemon.logs import configure_logging
from luckystack.daemon.progress import ProgressBar
from luckystack.daemon.session import OUTPUT_NAMES, Session, default_output_dir

__all__ = ["main", "build_parser"]

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

    p_run = sub.add_parser("run", help="stack the frames already in a folder (batch rerun)")
    p_run.add_argument("input", type=Path, metavar="INPUT", help="folder of frames")
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


def run_batch(input_dir: Path, output_dir: Path, settings: Settings, *, stream=None) -> Session:
    """Stack every frame already in ``input_dir``, in natural order."""
    from luckystack.daemon.watcher import list_existing_frames

    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    frames = list_existing_frames(
        input_dir, recursive=settings.watch.recursive, suffixes=settings.watch.suffixes
    )
    session = Session(
        pipeline_params(settings), input_dir, output_dir,
        write_comparison=settings.output.write_comparison,
    )
    with session:
        todo = [f for f in frames if not session.is_done(f)]
        if len(todo) < len(frames):
            logger.info("{} of {} frames already in the CSV; skipping them",
                        len(frames) - len(todo), len(frames))
        bar = ProgressBar(len(todo), stream=stream)
        for path in todo:
            rec = session.process(path)
            bar.update(note=f"{rec.file} {rec.outcome}")
        bar.close()
        session.write_outputs()
    return session


def _summary(session: Session, elapsed: float) -> str:
    s = session.stats
    out = session.output_dir
    lines = [
        f"processed {s.processed} frames in {elapsed:.1f} s "
        f"({s.processed / max(elapsed, 1e-9):.1f} frames/s): "
        f"{s.accepted} accepted, {s.rejected} rejected",
        f"outputs in {out}:",
    ]
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
    session = run_batch(args.input, output, settings)
    print(_summary(session, time.monotonic() - start))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from luckystack.daemon.demo import write_demo_session

    capture = args.dir / "capture"
    print(f"simulating a {args.frames}-frame capture session in {capture} ...")
    write_demo_session(capture, n_frames=args.frames, seed=args.seed)
    output = args.output or (args.dir / "output")
    start = time.monotonic()
    session = run_batch(capture, output, settings)
    print(_summary(session, time.monotonic() - start))
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
