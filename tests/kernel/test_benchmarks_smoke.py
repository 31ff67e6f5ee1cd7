"""The benchmark suite runs in one command: its quick smoke version.

No timing is asserted here (speed targets are checked by the benchmarks
themselves, in benchmarks/RESULTS.md): only that every benchmark ran and
wrote its section, and that the results name the machine.
"""

import os
import subprocess
import sys

from helpers.exporter import REPO_ROOT

RUN = os.path.join(REPO_ROOT, "benchmarks", "run.py")


def known_benchmarks():
    """(name, present, optional) of every benchmark run.py knows."""
    out = subprocess.run([sys.executable, RUN, "--list"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    return [(name, state == "present", kind == "optional") for name, state, kind in rows]


def sections(text):
    """{benchmark name: its section} from the markers run.py writes."""
    found = {}
    for part in text.split("<!-- benchmark: ")[1:]:
        name, _, body = part.partition(" -->")
        found[name] = body
    return found


def test_quick_suite_writes_every_section(tmp_path):
    benchmarks = known_benchmarks()
    assert {"bench_scale", "bench_guest_cost", "bench_teardown", "bench_exporter"} <= \
        {name for name, _, _ in benchmarks}
    output = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, RUN, "--quick", "--output", str(output)],
                          capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    text = output.read_text()
    assert text.startswith("# kvmstat benchmark results")
    assert text.strip() in proc.stdout  # the results are printed too
    for fact in ("CPU", "CPUs", "kernel", "Python", "date"):
        assert f"\n| {fact} | " in text, fact
    found = sections(text)
    assert set(found) == {name for name, _, _ in benchmarks}
    for name, present, optional in benchmarks:
        body = found[name]
        assert "FAILED" not in body, body
        if present:
            assert "\n## " in body and "not present" not in body, body
        else:
            assert optional, f"required benchmark {name} is missing"
            assert "not present" in body
    # The figures of the benchmarks built here, not just their titles.
    assert "| 16 | c |" in found["bench_scale"] and "| 16 | python |" in found["bench_scale"]
    assert "kvm_stat -l -f kvm_pio" in found["bench_guest_cost"]
    for ending in ("display: q", "log (-l): SIGINT", "batch (-1): output out"):
        assert ending in found["bench_teardown"]
    assert "scrape latency" in found["bench_exporter"]
