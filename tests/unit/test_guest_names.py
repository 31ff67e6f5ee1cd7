"""Guest names as QEMU parses -name, checked against a reference model.

The reference model below is written independently of kvmstat.host.vms, from
QEMU's rules (softmmu/vl.c and util/qemu-option.c, QEMU 7.2):

* QEMU reads argv from index 1; ``--opt`` is ``-opt``; an option that takes an
  argument consumes the next word; ``-name=x`` is not an option.
* ``-name`` options merge into one option list: the last ``guest`` wins.
* In the value, items end at a single comma; in a value ``,,`` is a comma.
  An item is ``key=value`` if ``=`` comes before the next comma; else the
  first item is ``guest`` (implied name, the whole item is the value) and
  later ones are flags (``x`` = ``x=on``, ``nox`` = ``x=off``).  ``id`` is
  skipped.  ``process=`` and ``debug-threads=`` do not change the name.
"""

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvmstat.host.vms import guest_name, name_options

_KEY = re.compile(r"([^=,]*)(=?)")
_VALUE = re.compile(r"((?:[^,]|,,)*)(,?)")


def reference_options(text):
    options = []
    rest = text
    first = True
    while rest:
        key, eq = _KEY.match(rest).groups()
        if eq or first:
            body = rest[len(key) + 1:] if eq else rest
            raw, comma = _VALUE.match(body).groups()
            option = (key if eq else "guest", raw.replace(",,", ","))
            rest = body[len(raw) + len(comma):]
        else:
            option = (key[2:], "off") if key.startswith("no") else (key, "on")
            rest = rest[len(key):]
            rest = rest[1:] if rest.startswith(",") else rest
        first = False
        if option[0] != "id":
            options.append(option)
    return options


def reference_guest_name(argv):
    name = None
    words = iter(argv[1:])
    for word in words:
        if word in ("-name", "--name"):
            value = next(words, None)
            if value is None:
                break
            guests = [v for k, v in reference_options(value) if k == "guest"]
            if guests:
                name = guests[-1]
    return name


FRAGMENTS = ["guest=", "process=", "debug-threads=on", "debug-threads", "id=", "no",
             ",", ",,", "=", "web", "a b", "é", "guest", "noguest"]
values = st.lists(st.sampled_from(FRAGMENTS) | st.text(",=agnoeu-x", max_size=3),
                  max_size=8).map("".join)
words = st.sampled_from(["-name", "--name", "-name=x", "---name", "-S", "-accel", "kvm",
                         "-smp"]) | values
argvs = st.lists(words, max_size=8).map(lambda rest: ["qemu-system-x86_64"] + rest)


@settings(max_examples=600)
@given(values)
@example("a,,,b")
@example(",,x")
@example("x,fl,,ag")
@example("guest=a,=b")
def test_name_value_parsing_matches_the_reference(text):
    assert name_options(text) == reference_options(text)


@settings(max_examples=600)
@given(argvs)
def test_guest_name_matches_the_reference(argv):
    assert guest_name(argv) == reference_guest_name(argv)


@given(st.text(st.characters(blacklist_characters="\0"), max_size=30))
def test_any_name_round_trips_through_guest_with_escaped_commas(name):
    escaped = name.replace(",", ",,")
    argv = ["qemu-system-x86_64", "-name", f"guest={escaped},process=qemu-x,debug-threads=on"]
    assert guest_name(argv) == name
    assert guest_name(["qemu", "-name", "process=p,guest=" + escaped]) == name


@given(st.text(st.characters(blacklist_characters="\0"), min_size=1, max_size=30))
def test_implied_name_round_trips_unless_it_looks_like_key_value(name):
    before_comma = name.split(",", 1)[0]
    expected = name if "=" not in before_comma else None
    assert guest_name(["qemu", "--name", name.replace(",", ",,")]) == expected


def test_documented_cases():
    cases = {
        ("-name", "web"): "web",
        ("-name", "guest=web,process=qemu-web,debug-threads=on"): "web",
        ("--name", "web"): "web",
        ("-name=web",): None,                     # not an option to QEMU
        ("-name", "process=qemu-web"): None,      # names the process only
        ("-name", "a,,b"): "a,b",
        ("-name", "guest=a,,b,debug-threads=on"): "a,b",
        ("-name", "foo", "-name", "debug-threads=on"): "foo",  # options merge
        ("-name", "foo", "-name", "bar"): "bar",  # the last guest wins
        ("-name", ""): None,
        ("-name", "guest="): "",
        ("-name", "id=x"): None,
        ("-name", "id=x,guest=y"): "y",
        ("-name", "x,noguest"): "off",            # a flag, as QEMU reads it
        ("-name", ",guest=y"): "y",
        ("-name", ",,x"): ",x",
        ("-name", "-name", "x"): "-name",         # -name takes the next word
        ("-name",): None,
        ("-smp", "2", "disk.img"): None,
    }
    for args, expected in cases.items():
        assert guest_name(["qemu-system-x86_64", *args]) == expected, args
    assert guest_name(["-name", "x"]) is None  # argv[0] is the program
    assert guest_name([]) is None
