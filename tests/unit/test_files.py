"""read_bounded: one bound and one wording for every file a person hands kubenas."""

import pytest

from kubenas.commands.common import read_genotype
from kubenas.errors import InvalidSpec, KubenasError
from kubenas.files import read_bounded, write_atomic
from kubenas.nn.latency_table import LatencyTableError, load_table
from kubenas.oneshot.worker import BadInput, read_spec


def test_a_file_within_the_bound_is_read_whole(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * 1024)
    assert read_bounded(path, 1024, "f") == b"x" * 1024


def test_a_larger_file_names_the_bound_and_the_hint(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(InvalidSpec, match=r"^where: larger than 1 MiB; keep it small$"):
        read_bounded(path, 1 << 20, "where", hint="keep it small", error=InvalidSpec)
    with pytest.raises(KubenasError, match=r"^where: larger than 1000 bytes$"):
        read_bounded(path, 1000, "where")


def test_an_unreadable_path_says_why(tmp_path):
    with pytest.raises(KubenasError, match=r"^where: cannot read it: No such file or directory$"):
        read_bounded(tmp_path / "absent", 10, "where")
    with pytest.raises(KubenasError, match=r"cannot read it: Is a directory"):
        read_bounded(tmp_path, 10, "where")


def test_a_dash_is_a_file_name_unless_standard_input_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KubenasError, match=r"^-: cannot read it"):
        read_bounded("-", 10, "-")


@pytest.mark.parametrize("read, error, where", [
    (read_genotype, KubenasError, "{path}: larger than 1 MiB; a genotype is a small JSON file"),
    (load_table, LatencyTableError, "latency table {path}: larger than 16 MiB"),
    (read_spec, BadInput, "--spec {path}: larger than 4 MiB; a spec is a small JSON file"),
])
def test_each_reader_keeps_its_own_error_and_wording(read, error, where, tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(16 << 20 | 1)  # sparse: larger than every bound without writing it
    with pytest.raises(error) as caught:
        read(str(path) if read is not read_spec else path)
    assert str(caught.value) == where.format(path=path)


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new", fsync=True)
    write_atomic(path, b"newer", fsync=False)
    assert path.read_bytes() == b"newer" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_atomic_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "text, not bytes")  # fails after the temporary file was opened
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
