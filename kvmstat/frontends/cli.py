"""The ``kvm_stat`` command line: options, validation, choosing the mode.

:func:`main` is the only place in kvmstat that decides an exit status; every
error reaches the user as one ``Error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Sequence

from .. import __version__
from ..errors import Error, InvalidArgument, NotAvailable
from .exporter_names import DEFAULT_VM_SERIES
from ..host.paths import Paths
from ..sampling.sampler import vm_exited_message
from ..sampling.teardown import close_detached
from ..textsafe import safe_text
from .arguments import DEFAULT_DELAY, MAX_DELAY, MIN_DELAY, parse_delay, parse_pid
from .hints import with_flags
from .streams import Notes, OutputStream, guard_standard_streams

if TYPE_CHECKING:
    from ..sampling.options import SamplerOptions

__all__ = ["build_parser", "parse_options", "Options", "main", "console_main"]

@dataclass
class Options:
    """Validated command-line options."""

    mode: str = "tui"                 # tui, batch, log, serve, check, fields-help
    providers: List[str] = field(default_factory=lambda: ["tracepoints"])
    fields: Optional[str] = None      # -f regex (None: all)
    pid: Optional[int] = None
    guest: Optional[str] = None
    delay: float = DEFAULT_DELAY
    log_file: Optional[str] = None
    csv: bool = False
    skip_zero: bool = False
    include_past: bool = False
    json: bool = False
    by_guest: bool = False
    serve: Optional[str] = None
    engine: str = "auto"
    web_config: Optional[str] = None
    vm_series: Optional[str] = DEFAULT_VM_SERIES   # None: no per-VM series
    vcpu_series: Optional[str] = None              # None: no per-vCPU series
    durations: bool = False


class UsageError(InvalidArgument):
    """An argument the parser itself rejects (unknown option, missing value):
    the ``Error:`` line, exit status 2 as for any usage error."""


class _ParserExit(Exception):
    """--help or --version was answered: exit with *status*."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as :class:`UsageError` (one line; the usage
    stays in --help) and its --help/--version text written like every other
    output (no traceback on a closed or full standard output)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see kvm_stat --help)")

    def exit(self, status: int = 0, message: Optional[str] = None):  # type: ignore[override]
        if message:
            Notes().note(message.strip())
        raise _ParserExit(status)

    def _print_message(self, message: str, file=None) -> None:
        if message:
            OutputStream.standard(2 if file is sys.stderr else 1).write(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of the man page)."""
    from ..sampling.engine import ENGINES

    parser = _Parser(
        prog="kvm_stat",
        description="Show what KVM guests make the host do: VM exits by reason, exits "
                    "to user space, I/O, interrupts, halt polling and every other KVM "
                    "event, live (curses), in batch or log mode, or as a Prometheus exporter.",
        epilog="Interactive keys: b by-guest view, c clear filters, f field filter, "
               "g/p guest filter, h help, o sort order, q quit, r reset, "
               "s refresh interval, t exit durations, x child events. Requires root (or CAP_PERFMON) and "
               "tracefs for tracepoints, debugfs for -d.")
    add = parser.add_argument
    add("-1", "--once", "--batch", dest="once", action="store_true",
        help="run in batch mode for one second")
    add("-c", "--csv", action="store_true", help="log in CSV format (requires -l or -L)")
    add("-d", "--debugfs", action="store_true", help="retrieve statistics from debugfs")
    add("-f", "--fields", metavar="FIELDS",
        help="fields to display (regex matched from the start of the name); "
             "'-f help' lists the available fields")
    add("-g", "--guest", metavar="GUEST", help="restrict statistics to the guest named GUEST")
    add("-i", "--debugfs-include-past", dest="include_past", action="store_true",
        help="debugfs values count from VM creation instead of from start-up")
    add("-l", "--log", action="store_true", help="run in logging mode (like vmstat)")
    add("-L", "--log-to-file", dest="log_file", metavar="FILE",
        help="like -l, but append the log to FILE")
    add("-p", "--pid", metavar="PID", help="restrict statistics to the VM process PID")
    add("-s", "--set-delay", dest="delay", metavar="DELAY",
        help=f"refresh interval in seconds, {MIN_DELAY} to {MAX_DELAY} (default {DEFAULT_DELAY:g})")
    add("-t", "--tracepoints", action="store_true",
        help="retrieve statistics from tracepoints (the default without -d)")
    add("-z", "--skip-zero-records", dest="skip_zero", action="store_true",
        help="omit log records whose values are all zero (requires -l or -L)")
    add("--json", action="store_true",
        help="with -1, -l or -L: print one JSON object per sample")
    add("--by-guest", action="store_true",
        help="with -1, -l or -L: one set of rows per VM instead of host totals")
    add("--serve", metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1)")
    add("--web-config", metavar="FILE",
        help="with --serve: TLS and basic authentication from FILE, a Prometheus "
             "exporter web configuration file (tls_server_config, basic_auth_users)")
    add("--vm-series", metavar="REGEX",
        help="with --serve: the fields that get per-VM series (matched from the start "
             "like -f; default: exits and their reasons, I/O, halts and interrupts)")
    add("--no-vm-series", action="store_true",
        help="with --serve: host series only, no per-VM series")
    add("--vcpu-series", metavar="REGEX", nargs="?", const=DEFAULT_VM_SERIES,
        help="with --serve and --binstats: per-vCPU series of the fields REGEX matches "
             "(without REGEX: the --vm-series default); off by default")
    add("--binstats", action="store_true",
        help="retrieve statistics from KVM's binary statistics file descriptors")
    add("--check", action="store_true",
        help="print which providers work on this host and why not, then exit")
    add("--engine", choices=ENGINES, default="auto",
        help="how tracepoints are counted: 'perf' groups (one event per field per CPU "
             "or thread), 'bpf' (one BPF program per tracepoint, counting per process "
             "and reason), or 'auto': BPF where the kernel and privileges allow it "
             "(default: auto)")
    add("--durations", action="store_true",
        help="measure how long each exit keeps the vCPU out of the guest, per event and "
             "reason (count, time share, avg, p50, p99, max): with -1 and -l/-L the "
             "table, with --json a \"durations\" object, with --serve Prometheus "
             "histograms; needs the BPF engine")
    add("--version", action="version", version=f"%(prog)s (kvmstat) {__version__}")
    return parser


# A value that argparse would take for an option because the parser has
# "-1" (which makes every negative-number-like word an option).
_NEGATIVE_VALUE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _attach_negative_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> List[str]:
    """Attach negative-number-like values to their option (``-s -1`` ->
    ``-s-1``), so that ``-s -1`` is a range error, not a usage error."""
    takes_value = {opt for action in parser._actions if action.nargs is None
                   for opt in action.option_strings}
    out: List[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            out.append(word)
            out.extend(words)
            break
        if word in takes_value:
            value = next(words, None)
            if value is not None and _NEGATIVE_VALUE.match(value):
                out.append(f"{word}={value}" if word.startswith("--") else word + value)
                continue
            out.append(word)
            if value is not None:
                out.append(value)
            continue
        out.append(word)
    return out


def parse_options(argv: Optional[Sequence[str]] = None) -> Options:
    """Parse and validate *argv* without touching the kernel.

    Raises :class:`InvalidArgument` for inconsistent options, and
    :class:`UsageError` (a subclass) for what the parser itself rejects.
    """
    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
    args = parser.parse_args(_attach_negative_values(parser, argv))
    opts = Options()
    logging = args.log or args.log_file is not None
    if args.csv and not logging:
        raise InvalidArgument("-c/--csv requires -l or -L")
    if args.skip_zero and not logging:
        raise InvalidArgument("-z/--skip-zero-records requires -l or -L")
    if args.json and not (logging or args.once):
        raise InvalidArgument("--json requires -1, -l or -L")
    if args.json and args.csv:
        raise InvalidArgument("--json and -c/--csv exclude each other")
    if args.by_guest and not (logging or args.once):
        raise InvalidArgument("--by-guest requires -1, -l or -L (in the display, press b)")
    if args.once and logging:
        raise InvalidArgument("-1 and -l/-L exclude each other")
    if args.log and args.log_file is not None:
        raise InvalidArgument("-l and -L exclude each other")
    if args.debugfs and args.binstats:
        raise InvalidArgument("-d and --binstats both show KVM's own statistics under the same "
                              "names: choose one")
    if args.pid is not None and args.guest is not None:
        raise InvalidArgument("-p and -g exclude each other")
    if args.serve is not None and (logging or args.once or args.check):
        raise InvalidArgument("--serve excludes -1, -l, -L and --check")
    if args.log_file is not None and not args.log_file.strip():
        raise InvalidArgument("-L/--log-to-file needs a file name")
    serve_only = [name for name, given in (("--web-config", args.web_config is not None),
                                           ("--vm-series", args.vm_series is not None),
                                           ("--no-vm-series", args.no_vm_series),
                                           ("--vcpu-series", args.vcpu_series is not None))
                  if given]
    if serve_only and args.serve is None:
        raise InvalidArgument(f"{serve_only[0]} works with --serve only")
    if args.no_vm_series and args.vm_series is not None:
        raise InvalidArgument("--vm-series and --no-vm-series exclude each other")
    if args.vcpu_series is not None and not args.binstats:
        raise InvalidArgument("--vcpu-series needs --binstats (per-vCPU values come from "
                              "KVM's binary statistics)")

    if args.check:
        opts.mode = "check"
    elif args.fields == "help":
        opts.mode = "fields-help"
    elif args.serve is not None:
        opts.mode = "serve"
    elif args.once:
        opts.mode = "batch"
    elif logging:
        opts.mode = "log"
    else:
        opts.mode = "tui"

    providers = []
    if args.tracepoints or not (args.debugfs or args.binstats):
        providers.append("tracepoints")
    if args.debugfs:
        providers.append("debugfs")
    if args.binstats:
        providers.append("binstats")
    opts.providers = providers

    if args.fields is not None and args.fields != "help":
        from ..sampling.fields import FieldFilter

        FieldFilter(args.fields)  # raises InvalidArgument for a bad regex
        opts.fields = args.fields
    if args.delay is not None:
        opts.delay = parse_delay(args.delay)
    if args.pid is not None:
        opts.pid = parse_pid(args.pid)
    if args.serve is not None:
        from .exporter import compile_series_regex, parse_serve_address

        parse_serve_address(args.serve)  # raises InvalidArgument for a bad [HOST:]PORT
        for option, regex in (("--vm-series", args.vm_series),
                              ("--vcpu-series", args.vcpu_series)):
            compile_series_regex(regex, option)  # raises InvalidArgument for a bad regex
        if args.vm_series is not None:
            opts.vm_series = args.vm_series
        if args.no_vm_series:
            opts.vm_series = None
        opts.vcpu_series = args.vcpu_series
        opts.web_config = args.web_config
    opts.guest = args.guest
    opts.log_file = args.log_file
    opts.csv = args.csv
    opts.skip_zero = args.skip_zero
    opts.include_past = args.include_past
    opts.json = args.json
    opts.by_guest = args.by_guest
    opts.serve = args.serve
    opts.engine = args.engine
    opts.durations = args.durations
    return opts


def _notify(message: str) -> None:
    """Write a one-line note to standard error (nowhere if it is closed)."""
    Notes().note(with_flags(message))


def _resolve_vm(opts: Options, paths: Paths) -> None:
    """Check -p and turn -g into a pid (before any event is opened).

    A thread id (what ``top -H`` shows) stands for its process, with a note
    once, so every engine counts the same process.
    """
    from ..host.vms import describe_vm, find_vm, find_vm_by_name, process_of

    if opts.guest is not None:
        opts.pid = find_vm_by_name(opts.guest, paths.proc).pid
    elif opts.pid is not None:
        owner = process_of(opts.pid, paths.proc)
        if owner is not None and owner != opts.pid:
            vm = find_vm(owner, paths.proc)
            _notify(f"{opts.pid} is a thread of the VM {describe_vm(vm)}: watching "
                    f"that process")
            opts.pid = owner
        else:
            find_vm(opts.pid, paths.proc)


def _sampler_options(opts: Options, paths: Paths, *, by_vm: Optional[bool] = None,
                     histograms: Optional[bool] = None) -> "SamplerOptions":
    """What the command line asks to count, as the one options object of the
    library (per VM with --by-guest, histograms with --json, unless said)."""
    from ..sampling.options import SamplerOptions

    return SamplerOptions(providers=tuple(opts.providers), fields=opts.fields, pid=opts.pid,
                          by_vm=opts.by_guest if by_vm is None else by_vm,
                          engine=opts.engine, include_past=opts.include_past,
                          histograms=opts.json if histograms is None else histograms,
                          durations=opts.durations, paths=paths)


def _run_fields_help(opts: Options, paths: Paths) -> int:
    from .formats.text import field_help_lines
    from ..sampling.sources import list_fields

    out = OutputStream.stdout()
    out.write("".join(line + "\n" for line in field_help_lines(
        list_fields(opts.providers, paths, _notify))))
    return 0


def _run_batch(opts: Options, paths: Paths) -> int:
    from .formats.text import batch_lines, by_guest_batch_lines
    from ..sampling.sources import sampler_for

    out = OutputStream.stdout()  # a closed output fails before any event is opened
    sampler = sampler_for(_sampler_options(opts, paths), notify=_notify)
    try:
        sample = sampler.sample()
        if not sampler.done:
            time.sleep(1)
            sample = sampler.sample()
        if sampler.done:
            # Its counts up to the exit are in the sample: print those.
            _notify(f"{vm_exited_message(sampler.pid)}: the counts end at its exit")
        if opts.json:
            from .formats.json import sample_json
            out.write(sample_json(sample, by_guest=opts.by_guest))
        elif opts.durations:
            from .formats.durations import batch_duration_lines, by_guest_duration_lines

            lines = (by_guest_duration_lines(sample) if opts.by_guest
                     else batch_duration_lines(sample))
            out.write("".join(line + "\n" for line in lines))
        else:
            lines = by_guest_batch_lines(sample) if opts.by_guest else batch_lines(sample)
            if opts.by_guest and not lines:
                _notify("no VM is running")
            out.write("".join(line + "\n" for line in lines))
    finally:
        # The program exits next: do not wait for the kernel's teardown.
        close_detached(sampler)
    return 0


def _run_check(opts: Options, paths: Paths) -> int:
    from .check import check_host, format_check

    out = OutputStream.stdout()
    result = check_host(paths)
    # The lines quote paths, kernel text and guest names: one line each.
    out.write("".join(safe_text(line) + "\n" for line in format_check(result)))
    return 0 if result.usable else 1


def _log_format(opts: Options) -> str:
    if opts.json:
        return "json"
    return "csv" if opts.csv else "plain"


def _run_log(opts: Options, paths: Paths) -> int:
    """Log mode: -L FILE is opened before any event, then the loop runs
    until SIGTERM/SIGINT, a closed pipe, or the watched VM exiting."""
    from ..sampling.sources import sampler_for
    from .logger import LogFile, Logger, StreamOutput, log_layout
    from .signals import Signals

    if opts.durations:
        from .logger import durations_log_layout

        layout = durations_log_layout(_log_format(opts), opts.by_guest)
    else:
        layout = log_layout(_log_format(opts), opts.by_guest)
    signals = Signals(hangup="reload" if opts.log_file is not None else "ignore")
    if opts.log_file is not None:
        output = LogFile(opts.log_file, notify=_notify)
    else:
        output = StreamOutput(OutputStream.stdout(signals))
    with output, signals:
        sampler = sampler_for(_sampler_options(opts, paths), notify=_notify)
        try:
            Logger(sampler, output, layout, delay=opts.delay,
                   skip_zero=opts.skip_zero).run(signals)
            if sampler.done:
                _notify(vm_exited_message(sampler.pid))
        finally:
            # The program exits next: do not wait for the kernel's teardown.
            close_detached(sampler)
    return 0


def _run_serve(opts: Options, paths: Paths) -> int:
    """The exporter: read --web-config and bind first (a bad file or a busy port
    fails before any event is opened), then open the providers and serve until
    SIGTERM or SIGINT.  SIGHUP reloads: the VMs are discovered and the providers
    opened again (the old ones released in the background); if that fails, the
    old ones keep serving and a note says why."""
    import threading

    from ..host.vms import GuestNames, find_vm
    from ..sampling.sources import sampler_for
    from .exporter import KvmCollector, MetricsServer, compile_series_regex, parse_serve_address
    from .exporter_web import load_web_config
    from .signals import Signals

    def release_later(resource) -> None:
        # Closing perf events is slow: it must not stall a scrape or the reload.
        threading.Thread(target=resource.close, name="kvmstat-release", daemon=True).start()

    vm_series = compile_series_regex(opts.vm_series, "--vm-series")
    vcpu_series = compile_series_regex(opts.vcpu_series, "--vcpu-series")

    def open_collector() -> KvmCollector:
        vm = find_vm(opts.pid, paths.proc) if opts.pid is not None else None
        per_vm = opts.vm_series is not None or opts.vcpu_series is not None
        options = _sampler_options(opts, paths, by_vm=per_vm and opts.pid is None,
                                   histograms=True)
        sampler = sampler_for(options, notify=_notify)
        collector = KvmCollector(sampler, vm=vm, release=release_later, notify=_notify,
                                 vm_series=vm_series, vcpu_series=vcpu_series,
                                 names=GuestNames(paths.proc),
                                 histograms=options.field_filter.matches, version=__version__)
        if sampler.durations is not None:
            from .exporter_durations import durations_writer
            from .exporter_render import vm_label_text

            collector.add_families(durations_writer(
                sampler.durations, vm_label_text(vm.pid, vm.name) if vm is not None else "",
                vm_series if options.by_vm else None))
        return collector

    web = load_web_config(opts.web_config) if opts.web_config is not None else None
    with MetricsServer(parse_serve_address(opts.serve), notify=_notify, web=web) as server, \
            Signals(hangup="reload") as signals:
        current = open_collector()
        try:
            server.register(current)
            _notify(f"serving metrics at {server.url}")
            server.start()
            while not signals.stopping:
                signals.wait(None)
                if signals.take_reload() and not signals.stopping:
                    try:
                        fresh = open_collector()
                    except Error as exc:
                        _notify(f"reload failed ({exc}): still serving what was open")
                        continue
                    # The server answers from the new collector from now on.
                    server.register(fresh)
                    current, old = fresh, current
                    release_later(old)
                    _notify("reloaded: VMs discovered and providers opened again")
        finally:
            close_detached(current)
    return 0


def _run_tui(opts: Options, paths: Paths) -> int:
    from .tui import run_tui

    return run_tui(_sampler_options(opts, paths, by_vm=False, histograms=False),
                   delay=opts.delay, notify=_notify)


def _require_terminal() -> None:
    for stream in (sys.stdout, sys.stdin):
        if stream is None or not stream.isatty():
            name = "stdout" if stream is sys.stdout else "stdin"
            raise NotAvailable(f"the interactive display needs a terminal but {name} is not "
                               "one: use -1 for one sample or -l for a log")
    from .tui import check_terminal

    check_terminal(os.environ.get("TERM"), sys.stdout.fileno())


def run(opts: Options, paths: Optional[Paths] = None) -> int:
    """Run the mode chosen by *opts*; returns the exit status."""
    paths = paths or Paths()
    if opts.mode == "check":
        return _run_check(opts, paths)
    if opts.mode == "fields-help":
        return _run_fields_help(opts, paths)
    if opts.mode == "tui":
        _require_terminal()
    _resolve_vm(opts, paths)
    if opts.mode == "batch":
        return _run_batch(opts, paths)
    if opts.mode == "log":
        return _run_log(opts, paths)
    if opts.mode == "serve":
        return _run_serve(opts, paths)
    return _run_tui(opts, paths)


def main(argv: Optional[Sequence[str]] = None, *, paths: Optional[Paths] = None) -> int:
    """Entry point of ``kvm_stat``: returns the exit status.  *paths* says
    where /proc, /sys, tracefs and debugfs are (the standard places by
    default).

    0: done (also when the reader of the output went away); 1: an error,
    told in one ``Error:`` line on standard error; 2: a usage error; 130:
    interrupted (Ctrl-C) before a mode took the signals over.
    """
    try:
        guard_standard_streams()
        try:
            opts = parse_options(argv)
            return run(opts, paths)
        except _ParserExit as exc:
            return exc.status
        except UsageError as exc:
            Notes().error(str(exc))
            return 2
        except Error as exc:
            Notes().error(with_flags(str(exc)))
            return 1
        except BrokenPipeError:
            # The reader went away (kvm_stat -1 | head): not an error.  What
            # Python still buffers for standard output goes nowhere.
            _silence_stdout()
            return 0
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def console_main() -> None:
    """``sys.exit(main())`` (the command itself starts in :mod:`kvmstat.__main__`,
    which also keeps Ctrl-C quiet while the modules are being imported)."""
    sys.exit(main())
