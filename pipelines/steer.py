#!/usr/bin/env python3
"""An endless live video whose prompt the application changes while it plays.

    pipelines/steer.py "a red ball bouncing"          # then type prompts, one per line
    pipelines/steer.py --every 10 "a red ball bouncing" "a blue square bouncing"

dualparalsrc (DualParal engine, endless, live) feeds a window; the prompt
property is set while the pipeline plays, from standard input (one prompt
per line; an empty line or end of input leaves the prompt as it is) or, with
--every N, every N seconds through the prompts given, round and round.  Each
change is announced when a block takes it (the element's
dualparal-prompt-applied message: the first frame the new prompt fully
owns).  Ctrl-C ends the stream.

Needs PyGObject and GStreamer's introspection data (Debian: python3-gi,
gir1.2-gstreamer-1.0).  Finds the plugin like the shell scripts (installed,
on GST_PLUGIN_PATH, or in a build*/gst folder of this source tree).
"""
import argparse
import glob
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def find_plugin():
    """Adds a build folder of this tree to GST_PLUGIN_PATH when the element
    is not found otherwise (before Gst.init reads the variable)."""
    here = os.path.dirname(os.path.abspath(__file__))
    Gst.init(None)
    if Gst.ElementFactory.find("dualparalsrc"):
        return True
    for d in [os.path.join(here, "..", "build", "gst")] + sorted(glob.glob(os.path.join(here, "..", "build?*", "gst"))):
        if os.path.exists(os.path.join(d, "libgstdualparal.so")) and Gst.Registry.get().scan_path(d):
            if Gst.ElementFactory.find("dualparalsrc"):
                return True
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prompts", nargs="+", help="the first prompt (and, with --every, the ones that follow)")
    ap.add_argument("--every", type=float, default=0, help="change the prompt every N seconds (default: from stdin)")
    ap.add_argument("--transition", type=int, default=0, help="blend each change in over K blocks (default 0)")
    ap.add_argument("--model", help="model directory (default: the element's, the embedded model)")
    ap.add_argument("--devices", default="cpu", help="devices (default cpu), e.g. 0,1,2,3 or cpu,cpu")
    ap.add_argument("--steps", type=int, default=0, help="sampler steps (default: the element's)")
    ap.add_argument("--scale", default="256x256", help="show the frames at WxH (nearest neighbour; '' = as made)")
    ap.add_argument("--sink", default="autovideosink", help="video sink (default autovideosink)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after N seconds (default: run until Ctrl-C)")
    args = ap.parse_args()

    if not find_plugin():
        sys.exit("dualparalsrc not found: build the plugin (meson setup build && ninja -C build) "
                 "and export GST_PLUGIN_PATH=<build>/gst, or install it")

    pipeline = Gst.Pipeline.new("steer")
    src = Gst.ElementFactory.make("dualparalsrc", "src")
    src.set_property("num-frames", -1)
    src.set_property("is-live", True)
    Gst.util_set_object_arg(src, "engine", "dualparal")
    src.set_property("prompt", args.prompts[0])
    src.set_property("transition-blocks", args.transition)
    src.set_property("devices", args.devices)
    if args.model:
        src.set_property("model", args.model)
    if args.steps > 0:
        src.set_property("steps", args.steps)
    chain = [src]
    if args.scale:
        w, h = (int(v) for v in args.scale.split("x"))
        scale = Gst.ElementFactory.make("videoscale")
        Gst.util_set_object_arg(scale, "method", "nearest-neighbour")
        caps = Gst.ElementFactory.make("capsfilter")
        caps.set_property("caps", Gst.Caps.from_string(f"video/x-raw,width={w},height={h}"))
        chain += [Gst.ElementFactory.make("videoconvert"), scale, caps]
    chain += [Gst.ElementFactory.make("queue"), Gst.ElementFactory.make("videoconvert"),
              Gst.ElementFactory.make(args.sink)]
    if any(e is None for e in chain):
        sys.exit("an element is missing (videoscale, videoconvert, queue or the sink %s)" % args.sink)
    for e in chain:
        pipeline.add(e)
    for a, b in zip(chain, chain[1:]):
        if not a.link(b):
            sys.exit(f"cannot link {a.get_name()} to {b.get_name()}")

    loop = GLib.MainLoop()

    def on_message(bus, msg):
        t = msg.type
        if t == Gst.MessageType.ELEMENT and msg.get_structure().get_name() == "dualparal-prompt-applied":
            s = msg.get_structure()
            print(f"prompt \"{s.get_string('prompt')}\" owns the video from frame {s.get_int64('frame')[1]}"
                  f" (block {s.get_int64('block')[1]})", flush=True)
        elif t == Gst.MessageType.WARNING:
            err, _ = msg.parse_warning()
            print(f"warning: {err.message}", file=sys.stderr, flush=True)
        elif t == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            print(f"error: {err.message}", file=sys.stderr, flush=True)
            loop.quit()
        elif t == Gst.MessageType.EOS:
            loop.quit()
        return True

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)

    def set_prompt(text):
        print(f"setting prompt \"{text}\"", flush=True)
        src.set_property("prompt", text)  # the element queues it for the next block

    if args.every > 0:
        state = {"i": 0}

        def rotate():
            state["i"] = (state["i"] + 1) % len(args.prompts)
            set_prompt(args.prompts[state["i"]])
            return True

        GLib.timeout_add(int(args.every * 1000), rotate)
    else:
        def on_stdin(channel, condition):
            if condition & (GLib.IOCondition.HUP | GLib.IOCondition.ERR):
                return False
            line = sys.stdin.readline()
            if line == "":
                return False  # end of input: the video goes on with the last prompt
            if line.strip():
                set_prompt(line.strip())
            return True

        GLib.io_add_watch(GLib.IOChannel.unix_new(sys.stdin.fileno()),
                          GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP, on_stdin)
        print("type a prompt and Enter to change the video; Ctrl-C ends", flush=True)

    def stop():
        pipeline.send_event(Gst.Event.new_eos())
        return False

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, stop)
    if args.seconds > 0:
        GLib.timeout_add(int(args.seconds * 1000), stop)
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        pipeline.set_state(Gst.State.NULL)
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        sys.exit("the pipeline did not start: " + (msg.parse_error()[0].message if msg else "no error posted"))
    try:
        loop.run()
    finally:
        pipeline.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
