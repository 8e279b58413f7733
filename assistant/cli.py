"""`assistant`: the device's command line.

`assistant demo` is the main job of `make demo`. Until the device services exist it runs a whole
secure aggregation over MQTT on one machine (embedded broker, coordinator, clerks, devices in
separate processes), then the same protocol at the SDA paper's medium setting in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `assistant`."""
    parser = argparse.ArgumentParser(
        prog="assistant",
        description="A private-by-design wake-word assistant that learns from its users by secure"
        " aggregation, without seeing their data.",
    )
    parser.add_argument("--version", action="version", version=f"assistant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the demo on embedded defaults",
        description="Today: (1) one round over MQTT on an embedded broker: a coordinator, 12 clerks"
        " and 60 simulated devices in two processes; (2) one in-memory round of 2,000 devices over"
        " 80 clerks (the SDA paper's medium setting). Each ends with the revealed sum against the truth.",
    )
    demo.add_argument("--devices", type=int, default=60, help="devices in the MQTT round (default 60)")
    demo.add_argument("--broker", default=None, help="use this broker (mqtt://...) instead of an embedded one")
    demo.add_argument("--participants", type=int, default=2000, help="devices in the in-memory round")
    demo.add_argument("--clerks", type=int, default=80, help="clerks in the in-memory round")
    demo.add_argument("--dimension", type=int, default=100)
    det = sub.add_parser(
        "detect", help="print the wake-word detections in an audio file",
        description="Run the wake-word engine over a 16 kHz mono WAV or FLAC file (or raw int16 PCM on"
        " stdin with FILE '-') and print each detection with its time and score.")
    det.add_argument("file", help="audio file, or - for raw 16 kHz int16 PCM on stdin (arecord)")
    _model_options(det)
    det.add_argument("--wakeword-id", default=None, help="id in Hermes messages (default: the model's wake word)")
    det.add_argument("--hermes", default=None, metavar="URL",
                     help="also publish hermes/hotword/ID/detected to this local broker (mqtt://host:port)")
    det.add_argument("--json", action="store_true", help="one JSON object per detection")
    ev = sub.add_parser(
        "eval", help="measure a model on your own labelled recordings",
        description="Stream every recording in DIR/positive (each holds the wake word once) and"
        " DIR/negative (anything else) through the wake-word engine, 16 kHz mono WAV or FLAC, and"
        " print the false rejection rate at 0.1, 0.5 and 1 false accepts per hour with the threshold"
        " that reaches each, and the false accepts per hour at --threshold.")
    ev.add_argument("dir", type=Path, help="folder with positive/ and negative/ subfolders of .wav/.flac files")
    _model_options(ev)
    ev.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    _run_parser(sub)
    _tui_parser(sub)
    _data_parser(sub)
    return parser


def _data_parser(sub) -> None:
    """`assistant data`: the owner's copy of what the device keeps, and its deletion."""
    data = sub.add_parser(
        "data", help="export, prune or delete everything the device keeps",
        description="Everything the device saves (detections, near misses, clips, labels, settings) stays in"
        " its store on the device. `export` writes all of it to one zip file; `retention` applies the retention"
        " settings now (the service also does); `delete-everything` removes every row, every clip and the"
        " database files. Stop `assistant run` first for delete-everything.")
    data.add_argument("action", choices=["export", "retention", "delete-everything"])
    data.add_argument("path", nargs="?", type=Path, help="the zip file to write (export)")
    data.add_argument("--store", type=Path, default=None, metavar="DIR",
                      help="the device store (default: $XDG_DATA_HOME/assistant or ~/.local/share/assistant)")
    data.add_argument("--yes", action="store_true", help="delete-everything without asking")


def _run_parser(sub) -> None:
    """`assistant run`: the device service."""
    from .kws.model import default_model_dir

    run = sub.add_parser(
        "run", help="listen for the wake word and keep what it hears in the device store",
        description="The device service: listen (microphone, a file, or raw PCM on stdin), save each detection"
        " and near miss with its clip and embeddings in the device store, publish detections to a local Hermes"
        " bus if asked, and answer `assistant tui` on the control socket. Ctrl-C or SIGTERM stops it cleanly.")
    run.add_argument("--input", default=None, metavar="FILE|-",
                     help="a 16 kHz mono WAV/FLAC file, or - for raw 16 kHz int16 PCM on stdin (default: the"
                     " microphone)")
    run.add_argument("--device", default=None,
                     help="microphone: PortAudio device name or number (list them with `python -m sounddevice`)")
    run.add_argument("--realtime", action="store_true",
                     help="pace file input at real time, as a microphone would (so the TUI can interact);"
                     " default: as fast as possible")
    run.add_argument("--store", type=Path, default=None, metavar="DIR",
                     help="the device store (default: $XDG_DATA_HOME/assistant, else ~/.local/share/assistant)")
    run.add_argument("--model", type=Path, default=None, metavar="DIR",
                     help=f"model directory with backbone.onnx, head.npz and card.json (default: the shipped"
                     f" model, {default_model_dir()})")
    run.add_argument("--threshold", type=float, default=None,
                     help="score to fire at (default: the model card's operating point)")
    run.add_argument("--pre-roll", type=float, default=2.0, metavar="SECONDS",
                     help="audio saved before each detection or near miss (default 2)")
    run.add_argument("--hermes", default=None, metavar="URL",
                     help="also publish hermes/hotword/ID/detected to this local broker (mqtt://host:port)")
    run.add_argument("--control", type=Path, default=None, metavar="PATH",
                     help="the control socket `assistant tui` talks to (default: DIR/control.sock in the store)")


def _tui_parser(sub) -> None:
    """`assistant tui`: the owner's labelling and status UI."""
    tui = sub.add_parser(
        "tui", help="review, label and play what the device saved; status and settings",
        description="A terminal UI over the device store (keyboard only, fits 80x24 over SSH): the review queue"
        " with single-key labels (y right, n false alarm, m missed, u unsure), bulk labels and undo; playing a"
        " clip; \"you missed me\" (!) through the running service; model, accuracy, privacy budget and clerk"
        " status; privacy and retention settings.")
    tui.add_argument("--store", type=Path, default=None, metavar="DIR",
                     help="the device store (default: the one `assistant run` uses, $XDG_DATA_HOME/assistant,"
                     " else ~/.local/share/assistant)")
    tui.add_argument("--control", type=Path, default=None, metavar="PATH",
                     help="the control socket of `assistant run` (default: DIR/control.sock in the store)")
    tui.add_argument("--model", type=Path, default=None, metavar="DIR",
                     help="the model that rescores a clip for its score-over-time plot (default: the shipped"
                     " model; without one, only the stored score is shown)")


def _model_options(p: argparse.ArgumentParser) -> None:
    """The model and detector options `detect` and `eval` share."""
    from .kws.model import default_model_dir

    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help=f"model directory with backbone.onnx, head.npz and card.json (default: the shipped"
                   f" hey snips model, {default_model_dir()}; hey jarvis is in {default_model_dir('hey_jarvis')})")
    p.add_argument("--backbone", type=Path, default=None, help="a backbone .onnx outside a model directory")
    p.add_argument("--head", type=Path, default=None, help="a head .npz outside a model directory (with --backbone)")
    p.add_argument("--threshold", type=float, default=None,
                   help="score to fire at (default: the model card's operating point, 0.5 FA/h on held-out"
                   " voices; 0.5 without a card)")
    p.add_argument("--patience", type=int, default=1,
                   help="frames at or above the threshold in a row (default 1, as the card's threshold was measured)")
    p.add_argument("--refractory", type=float, default=2.0, help="seconds of quiet after a detection (default 2)")


def _engine(args: argparse.Namespace):
    """(Engine, wake word id, threshold) from --model or --backbone/--head."""
    from .errors import AssistantError
    from .kws.backbone import Backbone
    from .kws.detector import Detector
    from .kws.engine import Engine
    from .kws.head import Head
    from .kws.model import default_model_dir, load_model

    if (args.backbone is None) != (args.head is None):
        raise AssistantError("--backbone and --head go together")
    if args.backbone is not None:
        if args.model is not None:
            raise AssistantError("give either --model or --backbone/--head, not both")
        threshold = 0.5 if args.threshold is None else args.threshold
        engine = Engine(Backbone(args.backbone), Head.load(args.head),
                        Detector(threshold, args.patience, args.refractory))
        return engine, "hey_snips", threshold
    model = load_model(args.model or default_model_dir())
    engine = model.engine(args.threshold, args.patience, args.refractory)
    return engine, model.wakeword.replace(" ", "_"), engine.detector.threshold


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assistant` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tui"]:
        # Straight to the UI: the other subcommands' help texts import the model code, a fifth of a second
        # the UI's start would wait for.
        parser = argparse.ArgumentParser(prog="assistant")
        _tui_parser(parser.add_subparsers(dest="command"))
        return _tui(parser.parse_args(argv))
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from sda.cli import main as sda_main
        from sda.services.demo import run_demo

        print("== 1. a secure aggregation over MQTT ==")
        if not run_demo(devices=args.devices, broker_url=args.broker):
            return 1
        print("\n== 2. the SDA paper's medium setting, in memory ==")
        return sda_main([
            "simulate", "--participants", str(args.participants), "--clerks", str(args.clerks),
            "--dimension", str(args.dimension),
        ])
    if args.command == "detect":
        return _detect(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "run":
        return _run(args)
    if args.command == "tui":
        return _tui(args)
    if args.command == "data":
        return _data(args)
    build_parser().print_help()
    return 2


def _detect(args: argparse.Namespace) -> int:
    import json

    from .audio import file_frames, stdin_frames
    from .errors import AssistantError

    try:
        engine, wakeword_id, _ = _engine(args)
        wakeword_id = args.wakeword_id or wakeword_id
        source = stdin_frames() if args.file == "-" else file_frames(Path(args.file))
        hermes = None
        if args.hermes:
            from .hermes import HermesPublisher

            hermes = HermesPublisher(args.hermes)
            if not hermes.wait_connected():
                raise AssistantError(f"cannot reach the local broker {args.hermes}")
        count = 0
        for frame in source:
            step = engine.process(frame)
            if step.detection is None:
                continue
            count += 1
            d = step.detection
            if args.json:
                print(json.dumps({"wakeword_id": wakeword_id, "time_s": round(d.time_s, 3),
                                  "score": round(d.score, 4)}), flush=True)
            else:
                print(f"{d.time_s:8.2f} s  {wakeword_id}  score {d.score:.3f}", flush=True)
            if hermes is not None:
                hermes.detected(wakeword_id, d.score, d.time_s)
        if hermes is not None:
            hermes.close()
        if not args.json:
            print(f"{count} detection{'s' if count != 1 else ''}", file=sys.stderr)
        return 0
    except (AssistantError, ValueError) as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1


def _eval(args: argparse.Namespace) -> int:
    import json

    from .errors import AssistantError
    from .kws.owner_eval import evaluate_recordings, render_table

    def progress(done: int, total: int) -> None:
        # every tenth of the way, when there are enough files for the wait to show
        if total >= 20 and (done * 10 // total) != ((done - 1) * 10 // total):
            print(f"eval: {done}/{total} recordings scored", file=sys.stderr, flush=True)

    try:
        engine, _, threshold = _engine(args)
        result = evaluate_recordings(args.dir, engine, threshold, args.patience, args.refractory, progress)
    except (AssistantError, ValueError) as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_json()) if args.json else render_table(result))
    return 0


def _run(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal
    import time

    from .audio import FRAME_MS, file_frames, microphone_frames, paced, stdin_frames
    from .errors import AssistantError
    from .kws.model import default_model_dir
    from .service import ServiceConfig, default_store_dir, serve

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="assistant: %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemd's stop: the same clean exit as Ctrl-C

    def heard(h) -> None:
        print(f"{time.strftime('%H:%M:%S', time.localtime(h.time_s))}  {h.stream_s:8.2f} s  {h.wakeword}"
              f"  score {h.score:.3f}", flush=True)

    try:
        if args.input is None:
            device = int(args.device) if args.device and args.device.isdigit() else args.device
            frames, source = microphone_frames(device), f"microphone {device}" if device else "microphone"
        elif args.input == "-":
            frames, source = stdin_frames(), "stdin"
        else:
            frames, source = file_frames(Path(args.input)), f"file {args.input}"
        if args.realtime and args.input is not None:
            frames, source = paced(frames), f"{source} (real time)"
        config = ServiceConfig(args.model or default_model_dir(), threshold=args.threshold,
                               pre_roll_s=args.pre_roll, source=source)
        summary = serve(config, args.store or default_store_dir(os.environ), frames, args.control, args.hermes,
                        heard)
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down: the store is crash-safe anyway
        return 130
    s = "" if summary.detections == 1 else "s"
    print(f"summary: {summary.frames} frames ({summary.frames * FRAME_MS / 1000:.1f} s of audio), {summary.detections}"
          f" detection{s}, {summary.near_misses} near miss{'' if summary.near_misses == 1 else 'es'}", flush=True)
    return 0


def _tui(args: argparse.Namespace) -> int:
    """Become `python -m tui` with the options given (exec: `assistant` never imports `tui`, the UI depends on
    the device and not the other way round). `tui` fills in the defaults of `assistant run` itself, so this
    process imports nothing heavy before it is replaced."""
    import os

    argv = [sys.executable, "-m", "tui"]
    for option, value in (("--store", args.store), ("--control", args.control), ("--model", args.model)):
        if value is not None:
            argv += [option, str(value)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached: execv returns only by raising


def _data(args: argparse.Namespace) -> int:
    from .errors import AssistantError
    from .service import default_store_dir
    from .store import Store

    root = args.store or default_store_dir()
    try:
        if not (root / "store.db").exists():
            raise AssistantError(f"no store in {root} (nothing saved yet, or give --store DIR)")
        if args.action == "export":
            if args.path is None:
                raise AssistantError("export needs the zip file to write: assistant data export FILE.zip")
            with Store(root) as store:
                print(store.export(args.path))
            return 0
        if args.action == "retention":
            with Store(root) as store:
                r = store.apply_retention()
            print(f"removed {r.clips_removed} clips ({r.bytes_freed:,} bytes) and {r.rows_deleted} rows")
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                raise AssistantError("delete-everything asks first; on a pipe, pass --yes")
            if input(f"delete every detection, label and clip in {root}? type yes: ").strip() != "yes":
                print("nothing deleted")
                return 1
        Store(root).delete_everything()
        print(f"deleted everything in {root}")
        return 0
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
