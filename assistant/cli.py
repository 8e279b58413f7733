"""`assistant`: the device's command line.

`assistant demo` is the main job of `make demo` (assistant/demo): the whole private-learning story on one machine.
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
        help="the whole private-learning story on this machine (what `make demo` runs)",
        description="Start an MQTT broker (embedded unless --broker), the developer's coordinator and N simulated"
        " devices, each its own process running the real device code with the shipped model, some of them also"
        " clerks. Each device hears a day of synthetic speech in a voice the model never trained on; its simulated"
        " owner labels what it saved. Then one analytics round and --rounds learning rounds, all by secure"
        " aggregation with differential-privacy noise added by the clerks, each revealed sum checked against the"
        " truth. Ends with FRR and false accepts per hour before and after on held-out audio, epsilon spent, tokens"
        " per clerk, bytes per role, and PNG plots. Needs espeak-ng, flite and festival (`make demo` installs them"
        " as root) and the source checkout. About 3 minutes at the defaults on 2 cores.")
    demo.add_argument("--devices", type=int, default=20, help="simulated devices, one process each (default 20)")
    demo.add_argument("--rounds", type=int, default=3, help="learning rounds (default 3)")
    demo.add_argument("--clerks", type=int, default=None,
                      help="devices whose owners are clerks too: the committee (default 2 in 5, at least 3)")
    demo.add_argument("--broker", default=None, metavar="URL",
                      help="a broker to use instead of the embedded one, mqtt://host:port (it must let the demo's"
                      " parties log in without passwords: a Mosquitto with allow_anonymous true)")
    demo.add_argument("--epsilon", type=float, default=8.0,
                      help="each device's privacy budget for all rounds together (default 8, at delta 1e-6)")
    demo.add_argument("--out", type=Path, default=None, metavar="DIR",
                      help="where the PNG plots go (default ./demo-output)")
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
    _learning_parser(sub)
    _analytics_parser(sub)
    _coordinator_parser(sub)
    _admin_parsers(sub)
    return parser


def _learning_parser(sub) -> None:
    """`assistant learning`: the owner's say over federated learning on this device."""
    learning = sub.add_parser(
        "learning", help="opt in or out of learning rounds, see the privacy spent, roll back a release",
        description="Federated learning of the wake-word head: with the owner's opt-in, the device sends a"
        " clipped, noised gradient of its labels to secure aggregation rounds (the developer sees only the sum"
        " over many devices) and installs the signed releases that come back. `status` shows whether it is opted"
        " in, the labels not learned from yet, the differential-privacy epsilon spent of the owner's budget, the"
        " installed model version and whether it can roll back; `opt-in [--budget EPS]` and `opt-out` change the"
        " setting (the device never spends beyond the budget); `rollback` goes back to the previous release, for"
        " good, and tells a running `assistant run` to reload. Rounds run only while `assistant run` is started"
        " with --credentials (or --broker and --coordinator-key, or learning.credentials in its configuration).")
    learning.add_argument("action", choices=["status", "opt-in", "opt-out", "rollback"])
    learning.add_argument("--budget", type=float, default=None, metavar="EPS",
                          help="opt-in: the epsilon all rounds together may spend, at delta 1e-6 (default: keep"
                          " the current budget, 8 on a new device)")
    _config_option(learning)
    learning.add_argument("--store", type=Path, default=None, metavar="DIR",
                          help="the device store (default: $XDG_DATA_HOME/assistant or ~/.local/share/assistant)")
    learning.add_argument("--model", type=Path, default=None, metavar="DIR",
                          help="status: the model labels are counted against before any release is installed"
                          " (default: the shipped model)")
    learning.add_argument("--control", type=Path, default=None, metavar="PATH",
                          help="rollback: the control socket of a running `assistant run` (default:"
                          " DIR/control.sock in the store)")
    learning.add_argument("--json", action="store_true", help="status: one JSON object")


def _analytics_parser(sub) -> None:
    """`assistant analytics`: the owner's say over the daily usage counters."""
    an = sub.add_parser(
        "analytics", help="opt in or out of private usage analytics, see what a day would send",
        description="Private usage analytics: the device counts what happens each day (detections, labels, keys,"
        " errors, ...), each counter clipped to a small declared range. With the owner's opt-in it answers each"
        " finished day's secure aggregation with those counters; the developer sees only the sum over many"
        " devices, with noise from the committee's clerks. `status` shows whether it is opted in and the most"
        " differential-privacy epsilon a day may cost (a day announcing less noise is refused); `opt-in` and"
        " `opt-out` change the setting; `show` prints a day's counters as they would be sent. Answers go out only"
        " while `assistant run` is started with --credentials (or --broker and --coordinator-key).")
    an.add_argument("action", choices=["status", "opt-in", "opt-out", "show"])
    an.add_argument("--day", default=None, metavar="YYYY-MM-DD",
                    help="show: the local day (default: yesterday, the latest one a device answers for)")
    _config_option(an)
    an.add_argument("--store", type=Path, default=None, metavar="DIR",
                    help="the device store (default: $XDG_DATA_HOME/assistant or ~/.local/share/assistant)")
    an.add_argument("--json", action="store_true", help="status, show: one JSON object")


def _coordinator_parser(sub) -> None:
    """`assistant coordinator`: the developer's learning coordinator."""
    co = sub.add_parser(
        "coordinator", help="run learning rounds for a model (the developer's side)",
        description="The developer's coordinator for federated learning of one model: sda's coordinator"
        " (device and clerk registry, committees, reveal, ledger) plus a learning round every --every seconds."
        " Each round is a secure aggregation of the opted-in devices' noised gradients; the revealed sum takes a"
        " FedAdam step, which is released (signed, retained on the broker) only when the validation set --validation"
        " says it is not worse. Devices verify each release and check it on their own labels before they install"
        " it. The first round starts --every seconds after start-up, and a round starts only once the previous one"
        " was handled. State (keys, database, FedAdam state, sealed releases) lives in --state; the coordinator's"
        " public keys for the devices: `sda coordinator keys --state DIR`. Build a validation set from a source"
        " checkout with `python -m models.validation --help`.")
    co.add_argument("--state", type=Path, required=True, metavar="DIR",
                    help="state directory (coordinator.key, coordinator.db, learning/)")
    login = co.add_mutually_exclusive_group(required=True)
    login.add_argument("--broker", metavar="URL", help="mqtt://coordinator:PASSWORD@host:port")
    login.add_argument("--broker-file", type=Path, metavar="FILE",
                       help="a file (mode 0600) holding that URL: the password then never shows in the process list"
                       " (what sda-coordinator.service uses)")
    co.add_argument("--model", type=Path, required=True, metavar="DIR",
                    help="the released model (backbone.onnx, head.npz, card.json) the rounds start from")
    co.add_argument("--validation", type=Path, required=True, metavar="FILE",
                    help="the developer's validation set (.npz, learning.validation.ValidationSet) embedded by the"
                    " model's backbone")
    co.add_argument("--model-id", default=None,
                    help="the id in round ids and release topics (default: the card's wake word, e.g. hey_snips;"
                    " devices use the same default)")
    co.add_argument("--every", type=float, default=600.0, metavar="SECONDS",
                    help="seconds between the starts of two rounds (default 600)")
    co.add_argument("--rounds", type=int, default=None, metavar="N", help="stop after N rounds (default: run until"
                    " Ctrl-C or SIGTERM)")
    co.add_argument("--min-participants", type=int, default=10, help="devices a round needs (default 10)")
    co.add_argument("--max-participants", type=int, default=1000,
                    help="devices a round takes; it closes early when they all sent (default 1000)")
    co.add_argument("--collect-seconds", type=float, default=60.0, help="how long a round collects (default 60)")
    co.add_argument("--results-seconds", type=float, default=60.0,
                    help="how long clerks have for their results (default 60)")
    co.add_argument("--noise-multiplier", type=float, default=1.0,
                    help="total noise standard deviation over the clip norm (default 1.0): more noise, less epsilon"
                    " per round for each device")
    co.add_argument("--noise-added-by", choices=("participants", "clerks"), default="participants",
                    help="who adds the differential-privacy noise (DESIGN §3): each device its 1/N_min share"
                    " (default), or each committee clerk sigma^2/(n-t) as a noise participant, which also holds"
                    " against a server padding a round with fake devices")
    co.add_argument("--committee-size", type=int, default=None, metavar="N",
                    help="with --noise-added-by clerks: the committee size n, needed to size the noise headroom"
                    " before the committee is drawn")
    co.add_argument("--clip-norm", type=float, default=1.0,
                    help="L2 clip of each device's gradient, stated in each release (default 1.0)")
    co.add_argument("--learning-rate", type=float, default=1e-2, help="FedAdam's server learning rate (default 0.01)")
    co.add_argument("--grant-stake", type=int, default=0,
                    help="tokens minted and staked for each new clerk (demos and tests; default 0)")
    co.add_argument("--analytics", action="store_true",
                    help="also request each finished local day's analytics aggregation (analytics.YYYY-MM-DD) once,"
                    " --analytics-grace seconds after midnight (and at start-up for yesterday if not requested yet),"
                    " and print each revealed day with its (epsilon, delta)")
    co.add_argument("--analytics-grace", type=float, default=600.0, metavar="SECONDS",
                    help="seconds after local midnight before the day just ended is requested (default 600)")
    co.add_argument("--analytics-epsilon", type=float, default=1.0,
                    help="the epsilon per device of one day's release, at delta 1e-6 (default 1)")
    co.add_argument("--analytics-min-participants", type=int, default=100,
                    help="devices a day's aggregation needs (default 100)")
    co.add_argument("--analytics-committee-size", type=int, default=12,
                    help="clerks in a day's committee, each adding its share of the noise (default 12)")
    co.add_argument("--analytics-collect-seconds", type=float, default=3600.0,
                    help="how long a day's aggregation collects answers (default 3600)")
    co.add_argument("--database", default=None,
                    help="coordinator database: postgresql://..., sqlite:///PATH or a path (default: SQLite at"
                    " STATE/coordinator.db)")


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
    _config_option(data)
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
        " bus if asked, and answer `assistant tui` on the control socket. Ctrl-C or SIGTERM stops it cleanly."
        " Settings come from --config (or $ASSISTANT_CONFIG); a flag given here wins over the file.")
    _config_option(run)
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
    run.add_argument("--pre-roll", type=float, default=None, metavar="SECONDS",
                     help="audio saved before each detection or near miss (default 2)")
    run.add_argument("--hermes", default=None, metavar="URL",
                     help="also publish hermes/hotword/ID/detected to this local broker (mqtt://host:port)")
    run.add_argument("--control", type=Path, default=None, metavar="PATH",
                     help="the control socket `assistant tui` talks to (default: DIR/control.sock in the store)")
    run.add_argument("--no-verifier", action="store_true",
                     help="do not let the personal verifier (trained on your labels, on this device only) turn"
                     " detections it doubts into near misses")
    fl = run.add_argument_group(
        "learning and analytics", "Take part in learning rounds and install signed releases, when the owner opted"
        " in (`assistant learning opt-in`), and answer the daily analytics aggregations, when the owner opted in"
        " to those (`assistant analytics opt-in`); opted out of both, nothing connects. Either --credentials, or"
        " --broker with --coordinator-key (or learning.* in --config). The model then runs from DIR/models in the"
        " store, where releases are installed.")
    fl.add_argument("--credentials", type=Path, default=None, metavar="FILE",
                    help="the device's credentials from `sda admin add-device NAME` (device id, broker login,"
                    " coordinator id and keys)")
    fl.add_argument("--broker", default=None, metavar="URL",
                    help="mqtt://DEVICE:PASSWORD@host:port (with --credentials: only its host and port are used)")
    fl.add_argument("--coordinator-key", default=None, metavar="HEX|FILE",
                    help="the coordinator's Ed25519 public key: hex, or a file with the hex or the JSON of"
                    " `sda coordinator keys`")
    fl.add_argument("--coordinator-id", default=None, help="the coordinator's id (default coordinator)")
    fl.add_argument("--device-id", default=None, help="the device's id (default: the broker user)")
    fl.add_argument("--device-key", type=Path, default=None, metavar="FILE",
                    help="the device's long-term keys, created on first use (default: DIR/device.key in the store)")
    fl.add_argument("--model-id", default=None,
                    help="the model id of the rounds and releases (default: the model's wake word, e.g. hey_snips)")
    fl.add_argument("--min-crowd", type=int, default=None, metavar="N",
                    help="take part only in rounds of at least N devices (default 100)")


def _tui_parser(sub) -> None:
    """`assistant tui`: the owner's labelling and status UI."""
    tui = sub.add_parser(
        "tui", help="review, label and play what the device saved; status and settings",
        description="A terminal UI over the device store (keyboard only, fits 80x24 over SSH): the review queue"
        " with single-key labels (y right, n false alarm, m missed, u unsure), bulk labels and undo; playing a"
        " clip; \"you missed me\" (!) through the running service; model, accuracy, privacy budget and clerk"
        " status; privacy and retention settings.")
    _config_option(tui)
    tui.add_argument("--store", type=Path, default=None, metavar="DIR",
                     help="the device store (default: the one `assistant run` uses, $XDG_DATA_HOME/assistant,"
                     " else ~/.local/share/assistant)")
    tui.add_argument("--control", type=Path, default=None, metavar="PATH",
                     help="the control socket of `assistant run` (default: DIR/control.sock in the store)")
    tui.add_argument("--model", type=Path, default=None, metavar="DIR",
                     help="the model that rescores a clip for its score-over-time plot (default: the shipped"
                     " model; without one, only the stored score is shown)")


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="the device configuration, YAML (default: $ASSISTANT_CONFIG, which the installed"
                   " `assistant` sets to /etc/assistant/assistant.yaml; without either, the built-in defaults)")


def _admin_parsers(sub) -> None:
    """`assistant config` and `assistant doctor`: checking an installation."""
    cf = sub.add_parser(
        "config", help="check or show the device configuration",
        description="check: read the configuration and list every problem, each with its key, the value found"
        " and what is allowed (exit 1 if any). show: print the configuration in effect, defaults filled in.")
    cf.add_argument("action", choices=["check", "show"])
    cf.add_argument("file", nargs="?", type=Path, default=None,
                    help="the file (default: --config, else $ASSISTANT_CONFIG, else the built-in defaults)")
    _config_option(cf)
    dr = sub.add_parser(
        "doctor", help="check this device: audio, model files, broker, clock, disk, keys",
        description="Check what the service needs, one line each: the configuration, the audio input, the model"
        " files against their card's hashes, the store's folder and free space, the device keys and their"
        " permissions, the clock, and (when learning is configured) the broker: reachable, TLS, login. Each"
        " problem comes with its fix. Exit 0 when nothing failed, 1 otherwise.")
    _config_option(dr)
    dr.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="broker checks (default 5)")
    dr.add_argument("--json", action="store_true", help="one JSON object instead of the lines")


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
        return _demo(args)
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
    if args.command == "learning":
        return _learning(args)
    if args.command == "analytics":
        return _analytics(args)
    if args.command == "coordinator":
        return _coordinator(args)
    if args.command == "config":
        return _config_command(args)
    if args.command == "doctor":
        return _doctor(args)
    build_parser().print_help()
    return 2


def _demo(args: argparse.Namespace) -> int:
    import logging

    from .demo.story import DEFAULT_OUT, DemoOptions, run_demo
    from .errors import AssistantError

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        opts = DemoOptions(devices=args.devices, rounds=args.rounds, clerks=args.clerks, broker_url=args.broker,
                           epsilon=args.epsilon, out_dir=args.out or DEFAULT_OUT)
        summary = run_demo(opts)
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0 if summary.rounds_completed and all(c.ok for c in summary.checks) else 1


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


def _device_config(args: argparse.Namespace):
    """The configuration file's settings (--config, else $ASSISTANT_CONFIG, else the defaults) with this command's
    flags on top. ConfigError (an AssistantError) naming every bad key."""
    from .config import config_path, load_config, override

    def flag(name: str):
        return getattr(args, name, None)

    return override(load_config(config_path(flag("config"))), {
        "audio": {"device": flag("device"), "input": None if flag("input") is None else Path(flag("input")),
                  "realtime": True if flag("realtime") else None},
        "model": {"dir": flag("model"), "threshold": flag("threshold"), "pre_roll_s": flag("pre_roll"),
                  "verifier": False if flag("no_verifier") else None},
        "store": {"dir": flag("store"), "control_socket": flag("control")},
        "hermes": {"url": flag("hermes")},
        "learning": {"credentials": flag("credentials"), "broker": flag("broker"),
                     "coordinator_key": flag("coordinator_key"), "coordinator_id": flag("coordinator_id"),
                     "device_id": flag("device_id"), "device_key": flag("device_key"), "model_id": flag("model_id"),
                     "min_crowd": flag("min_crowd")},
    })


def _run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import time

    from .audio import FRAME_MS, file_frames, microphone_frames, paced, stdin_frames
    from .config import store_dir
    from .errors import AssistantError
    from .notify import Notifier
    from .service import ServiceConfig, serve

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemd's stop: the same clean exit as Ctrl-C

    def heard(h) -> None:
        print(f"{time.strftime('%H:%M:%S', time.localtime(h.time_s))}  {h.stream_s:8.2f} s  {h.wakeword}"
              f"  score {h.score:.3f}", flush=True)

    notifier = Notifier()
    try:
        cfg = _device_config(args)
        logging.basicConfig(level=cfg.log.level.upper(), stream=sys.stderr, format="assistant: %(message)s")
        audio = cfg.audio
        if audio.input is None:
            device = int(audio.device) if audio.device and audio.device.isdigit() else audio.device
            frames, source = microphone_frames(device), f"microphone {device}" if device else "microphone"
        elif str(audio.input) == "-":
            frames, source = stdin_frames(), "stdin"
        else:
            frames, source = file_frames(audio.input), f"file {audio.input}"
        if audio.realtime and audio.input is not None:
            frames, source = paced(frames), f"{source} (real time)"
        root = store_dir(cfg)
        model_dir, attach = _learning_setup(cfg, root)
        m = cfg.model
        config = ServiceConfig(model_dir, threshold=m.threshold, patience=m.patience, refractory_s=m.refractory_s,
                               pre_roll_s=m.pre_roll_s, source=source, verifier=m.verifier)
        summary = serve(config, root, frames, cfg.store.control_socket, cfg.hermes.url, heard, attach, notifier)
    except AssistantError as exc:
        notifier.status(f"failed: {exc}")
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down: the store is crash-safe anyway
        return 130
    finally:
        notifier.close()
    s = "" if summary.detections == 1 else "s"
    print(f"summary: {summary.frames} frames ({summary.frames * FRAME_MS / 1000:.1f} s of audio), {summary.detections}"
          f" detection{s}, {summary.near_misses} near miss{'' if summary.near_misses == 1 else 'es'}"
          + (f", {summary.rejected} rejected by the personal verifier" if summary.rejected else ""), flush=True)
    return 0


def _learning_setup(cfg, store_dir: Path):
    """(the model directory to run, the hook that starts learning next to the service or None) for `run`.

    With learning configured the model runs from the store's versioned model directory (created from model.dir, or
    the shipped model, on first use), where releases are installed; the hook connects only when the owner opted
    in. Without it, a release installed earlier keeps running unless model.dir says otherwise."""
    import logging

    from .analytics.counters import count_quietly
    from .errors import AssistantError
    from .kws.model import default_model_dir, load_model
    from .learning.device import (
        DeviceAnalytics,
        DeviceLearning,
        LearningConfig,
        StartWhenReachable,
        connection_for,
        default_device_key,
        model_versions_dir,
    )
    from .learning.install import ModelVersions

    shipped = cfg.model.dir or default_model_dir()
    root = model_versions_dir(store_dir)
    fl = cfg.learning
    if not fl.enabled:
        return (root / "current" if cfg.model.dir is None and (root / "current").is_dir() else shipped), None
    if fl.credentials is None and (fl.broker is None or fl.coordinator_key is None):
        raise AssistantError("learning needs --credentials FILE (learning.credentials), or --broker URL together"
                             " with --coordinator-key (learning.broker and learning.coordinator_key)")
    model_id = fl.model_id or load_model(shipped).wakeword.replace(" ", "_")
    key = fl.device_key or default_device_key(store_dir)
    extra = {} if fl.min_crowd is None else {"min_crowd": fl.min_crowd}
    if fl.credentials is not None:
        config = LearningConfig.from_credentials(fl.credentials, key, model_id, fl.broker, **extra)
    else:
        config = LearningConfig.from_url(fl.broker, fl.coordinator_key, key, model_id, fl.device_id,
                                         fl.coordinator_id, **extra)
    versions = ModelVersions.adopt(root, shipped)

    def attach(store, service):
        settings = store.settings()
        which = connection_for(settings.learning_opt_in, settings.analytics_opt_in)
        if which != "learning":
            logging.getLogger("assistant.learning").info(
                "learning: not opted in (`assistant learning opt-in`): no rounds, no releases")
        if which is None:
            logging.getLogger("assistant.analytics").info(
                "analytics: not opted in (`assistant analytics opt-in`): no connection")
            return None
        def make():
            if which == "analytics":
                return DeviceAnalytics(store, config)
            return DeviceLearning(store, versions, service.reload, config)

        def unreachable() -> None:
            count_quietly(store, "error.broker_unreachable")

        try:  # a broker that does not answer: listen anyway, connect when it is back
            return StartWhenReachable(make, which, unreachable).start().stop
        except AssistantError:  # one that refuses the login: stop, as a bad configuration should
            unreachable()
            raise

    return versions.current, attach


def _learning(args: argparse.Namespace) -> int:
    import json

    from .config import store_dir
    from .control import ControlClient, default_control_path
    from .errors import AssistantError, ControlError
    from .kws.model import default_model_dir
    from .learning import commands

    try:
        cfg = _device_config(args)
        root = store_dir(cfg)
        if args.action == "status":
            st = commands.status(root, cfg.model.dir or default_model_dir())
            print(json.dumps(st.as_json()) if args.json else st.render())
            return 0
        if args.budget is not None and args.action != "opt-in":
            raise AssistantError("--budget goes with opt-in")
        if args.action in ("opt-in", "opt-out"):
            commands.set_opt_in(root, args.action == "opt-in", args.budget)
            st = commands.status(root, cfg.model.dir or default_model_dir())
            print(f"{'opted in' if st.opted_in else 'opted out'}: epsilon {st.epsilon_spent:.3f} spent of a budget"
                  f" of {st.epsilon_budget:g}" + ("" if st.opted_in else "; no round will be taken part in"))
            if st.opted_in and st.epsilon_spent >= st.epsilon_budget:
                print("note: the budget is spent already; no round will be taken part in", file=sys.stderr)
            return 0
        left, now = commands.roll_back(root)
        print(f"rolled back from version {left} to {now}; version {left} will not be installed again")
        control = cfg.store.control_socket or default_control_path(root)
        if control.exists():
            try:
                print(f"the running service reloaded: now {ControlClient(control).reload()}")
            except ControlError as exc:
                print(f"the running service did not reload ({exc}); it runs version {now} from its next start",
                      file=sys.stderr)
        return 0
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1


def _analytics(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from .analytics import commands
    from .config import store_dir
    from .errors import AssistantError

    try:
        root = store_dir(_device_config(args))
        if args.day is not None and args.action != "show":
            raise AssistantError("--day goes with show")
        if args.action in ("opt-in", "opt-out"):
            commands.set_opt_in(root, args.action == "opt-in")
            st = commands.status(root)
            print(f"opted in: each finished day's counters are sent, at most epsilon {st.max_day_epsilon:g} a day"
                  if st.opted_in else "opted out: no day's counters will be sent")
            return 0
        if args.action == "status":
            st = commands.status(root)
            print(json.dumps(st.as_json()) if args.json else st.render())
            return 0
        day = commands.parse_day(args.day) if args.day is not None else commands.last_day()
        counters = commands.day_counters(root, day)
        opted_in = commands.status(root).opted_in
        if args.json:
            print(json.dumps({"day": day, "opted_in": opted_in, "counters": [asdict(c) for c in counters]}))
            return 0
        shown = [c for c in counters if c.counted]
        print(f"{day}: {sum(c.sent for c in counters)} events in {len(shown)} of {len(counters)} counters"
              f" ({'sent when the day is asked for' if opted_in else 'not sent: not opted in'})")
        if shown:
            width = max(len(c.name) for c in shown)
            print(f"{'event':<{width}}  {'count':>5}  {'max':>4}")
            for c in shown:
                clipped = f"  (counted {c.counted}, clipped)" if c.counted != c.sent else ""
                print(f"{c.name:<{width}}  {c.sent:>5}  {c.max_count:>4}{clipped}")
        return 0
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1


def _coordinator(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from sda.errors import SdaError
    from sda.mqtt.transport import BrokerConfig

    from .analytics.coordinate import AnalyticsConfig
    from .errors import AssistantError
    from .kws.model import load_model
    from .learning import coordinate
    from .learning.rounds import LearningRoundConfig

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        model_id = args.model_id or load_model(args.model).wakeword.replace(" ", "_")
        setup = coordinate.CoordinatorSetup(
            args.state, BrokerConfig.from_url(_broker_url(args)), args.model, args.validation, model_id, args.every,
            args.rounds, args.clip_norm, args.learning_rate,
            LearningRoundConfig(noise_multiplier=args.noise_multiplier, min_participants=args.min_participants,
                                max_participants=args.max_participants, collect_s=args.collect_seconds,
                                results_s=args.results_seconds, noise_mode=args.noise_added_by,
                                committee_size=args.committee_size),
            args.grant_stake, args.database,
            AnalyticsConfig(epsilon=args.analytics_epsilon, committee_size=args.analytics_committee_size,
                            min_participants=args.analytics_min_participants,
                            collect_s=args.analytics_collect_seconds) if args.analytics else None,
            args.analytics_grace)
        daily = " and each day's analytics" if args.analytics else ""
        print(f"coordinator running learning rounds of {model_id} every {args.every:g} s{daily} (state"
              f" {args.state}); Ctrl-C to stop", file=sys.stderr, flush=True)
        coordinate.run(setup, stop, lambda o: print(coordinate.describe(o), flush=True),
                       lambda d: print(d.describe(), flush=True))
    except (AssistantError, SdaError) as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _config_command(args: argparse.Namespace) -> int:
    import yaml

    from .config import ConfigError, config_path, load_config

    path = config_path(args.file or args.config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    if args.action == "check":
        print(f"ok: {path}" if path is not None else "ok: no file given (--config or $ASSISTANT_CONFIG): the"
              " built-in defaults")
        return 0
    print(f"# the configuration in effect{f' (from {path})' if path else ' (the built-in defaults)'}")
    print(yaml.safe_dump(cfg.as_dict(), sort_keys=False), end="")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from .config import ConfigError, config_path
    from .doctor import Finding, run_checks

    try:
        cfg = _device_config(args)
    except ConfigError as exc:
        findings = [Finding("config", "fail", "\n".join(exc.problems),
                            f"edit {exc.source}; `assistant config check` lists what is allowed")]
    else:
        path = config_path(args.config)
        findings = [Finding("config", "ok", str(path) if path else "no file: the built-in defaults"),
                    *run_checks(cfg, args.timeout)]
    failed = sum(f.status == "fail" for f in findings)
    warned = sum(f.status == "warn" for f in findings)
    if args.json:
        print(json.dumps({"ok": failed == 0, "findings": [asdict(f) for f in findings]}))
    else:
        for f in findings:
            print(f.render())
        print(f"\n{failed} failed, {warned} to look at, {len(findings) - failed - warned} ok")
    return 1 if failed else 0


def _broker_url(args: argparse.Namespace) -> str:
    """--broker, or the first line of --broker-file; AssistantError naming the file when it cannot be read."""
    from .errors import AssistantError

    if args.broker_file is None:
        return args.broker
    try:
        lines = args.broker_file.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise AssistantError(f"--broker-file {args.broker_file}: cannot read it ({exc})") from exc
    if not lines:
        raise AssistantError(f"--broker-file {args.broker_file}: empty; write mqtt://coordinator:PASSWORD@host:port")
    return lines[0]


def _tui(args: argparse.Namespace) -> int:
    """Become `python -m tui` with the options given (exec: `assistant` never imports `tui`, the UI depends on
    the device and not the other way round). `tui` fills in the defaults of `assistant run` itself, so this
    process imports nothing heavy before it is replaced."""
    import os

    from .errors import AssistantError

    try:
        cfg = _device_config(args)
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1
    argv = [sys.executable, "-m", "tui"]
    for option, value in (("--store", cfg.store.dir), ("--control", cfg.store.control_socket),
                          ("--model", cfg.model.dir)):
        if value is not None:
            argv += [option, str(value)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached: execv returns only by raising


def _data(args: argparse.Namespace) -> int:
    from .config import store_dir
    from .errors import AssistantError
    from .store import Store

    try:
        root = store_dir(_device_config(args))
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
        (root / "verifier.npz").unlink(missing_ok=True)  # learned from the labels just deleted
        print(f"deleted everything in {root}")
        return 0
    except AssistantError as exc:
        print(f"assistant: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
