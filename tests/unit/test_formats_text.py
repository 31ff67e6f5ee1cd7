"""Golden outputs of the batch format and the -f help listing."""

from kvmstat.frontends.formats.text import batch_lines, field_help_lines
from kvmstat.sampling.sampler import Sample


def test_batch_golden():
    sample = Sample(0.0, 1.0, {
        "kvm_userspace_exit(IO)": (1234, 56),
        "kvm_pio": (1234, 56),
        "kvm_userspace_exit": (2000, 60),
        "kvm_exit": (0, 0),
    })
    assert "\n".join(batch_lines(sample)) + "\n" == (
        "kvm_exit                                           0         0\n"
        "kvm_pio                                         1234        56\n"
        "kvm_userspace_exit                              2000        60\n"
        "kvm_userspace_exit(IO)                          1234        56\n")


def test_batch_row_width_is_upstreams():
    sample = Sample(0.0, 1.0, {"x": (1, 2)})
    assert len(batch_lines(sample)[0]) == 42 + 10 + 10


def test_field_help_folds_children_sorts_and_indents():
    assert field_help_lines(["kvm_pio", "kvm_exit(HLT)", "kvm_exit", "kvm_exit(IO)", "exits"]) == [
        "  exits", "  kvm_exit", "  kvm_pio"]


def test_batch_by_guest_golden():
    from kvmstat.frontends.formats.text import by_guest_batch_lines
    sample = Sample(0.0, 1.0, {"kvm_pio": (30, 3)},
                    by_vm={812: {"kvm_pio": (10, 1), "kvm_exit": (0, 0)},
                           77: {"kvm_pio": (20, 2), "kvm_exit": (5, 0)}},
                    vm_names={812: "web,1", 77: None})
    assert "\n".join(by_guest_batch_lines(sample)) + "\n" == (
        "(pid 77)\n"
        "kvm_exit                                           5         0\n"
        "kvm_pio                                           20         2\n"
        "\n"
        "(pid 812) web,1\n"
        "kvm_exit                                           0         0\n"
        "kvm_pio                                           10         1\n")
    assert by_guest_batch_lines(Sample(0.0, 1.0, {}, by_vm={})) == []
