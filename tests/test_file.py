"""save/load/open: atomic streaming writes, memory-mapped zero-copy reads, lazy per-leaf access."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import eqx_msg

from conftest import assert_same_tree

KEY = jax.random.key(0)


def _model():
    return {
        "encoder": eqx.nn.MLP(8, 8, 16, 2, key=KEY),
        "decoder": eqx.nn.Linear(8, 4, key=KEY),
        "table": np.arange(4096, dtype=np.float32).reshape(64, 64),
        "i4": jnp.arange(-8, 8, dtype=jnp.int4),
        "step": 7,
    }


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "m.eqx"
    model = _model()
    eqx_msg.save(path, model, metadata={"step": 7})
    assert_same_tree(model, eqx_msg.load(path))
    assert path.read_bytes() == eqx_msg.dumps(
        model, metadata={"step": 7}
    )  # one format, two writers
    assert eqx_msg.header(str(path)).metadata == {"step": 7}


@pytest.mark.parametrize("alignment", [64, 4096])
def test_save_gathers_small_leaves_in_blocks_and_writes_the_bytes_of_dumps(
    tmp_path, monkeypatch, alignment
):
    from eqx_msg.io import _writer as _file

    monkeypatch.setattr(_file, "_SMALL_LEAF", 1000)  # smaller limits: many blocks, few bytes
    monkeypatch.setattr(_file, "_BLOCK", 80 * alignment)
    rng = np.random.default_rng(0)
    tree = [
        rng.standard_normal(n).astype(np.float32) if n else jax.ShapeDtypeStruct((3,), jnp.int8)
        for n in [3, 250, 0, 17, 251, 1, 2000, 5, 0, 240, 240, 240, 240, 240, 9000, 7, 64]
    ]
    path = tmp_path / "blocks.eqx"
    writes = []
    real = _file._write_all
    monkeypatch.setattr(_file, "_write_all", lambda f, d: writes.append(1) or real(f, d))
    eqx_msg.save(path, tree, alignment=alignment)
    assert path.read_bytes() == eqx_msg.dumps(tree, alignment=alignment)
    assert_same_tree(tree, eqx_msg.load(path))
    assert len(writes) < 25  # gathered: not one write per leaf and pad


def test_save_to_file_object(tmp_path):
    path = tmp_path / "f.eqx"
    with path.open("wb") as f:
        eqx_msg.save(f, _model())
    assert_same_tree(_model(), eqx_msg.load(path))


def _ways_of_writing(monkeypatch):
    """Count the file objects `save` writes positionally and those it streams to."""
    from eqx_msg.io import _writer

    ways: list[str] = []
    positional, stream = _writer._write_positional, _writer._StreamSink.leaf
    monkeypatch.setattr(
        _writer, "_write_positional", lambda *a: ways.append("positional") or positional(*a)
    )
    monkeypatch.setattr(_writer._StreamSink, "leaf", lambda *a: ways.append("stream") or stream(*a))
    return ways


@pytest.mark.parametrize("mode", ["wb", "w+b", "xb"])
def test_a_new_file_object_is_written_positionally_and_left_at_the_end(mode, tmp_path, monkeypatch):
    tree = {"w": np.arange(100_000, dtype=np.float32), "b": np.ones(3, np.int8), "s": "x"}
    ways = _ways_of_writing(monkeypatch)
    path = tmp_path / "f.eqx"
    with open(path, mode) as f:
        f.write(b"head")  # buffered, not yet in the file: flushed before the positional writes
        eqx_msg.save(f, tree)
        end = f.tell()
        f.write(b"tail")
    data = path.read_bytes()
    expected = eqx_msg.dumps(tree)
    assert ways == ["positional"]
    assert end == 4 + len(expected) and data == b"head" + expected + b"tail"
    assert_same_tree(tree, eqx_msg.loads(data[4:-4]))


def test_a_file_object_that_positional_writes_would_get_wrong_is_streamed(tmp_path, monkeypatch):
    tree = {"w": np.arange(100_000, dtype=np.float32)}
    expected = eqx_msg.dumps(tree)
    ways = _ways_of_writing(monkeypatch)
    appended = tmp_path / "a.eqx"  # O_APPEND: pwrite would append, at any offset
    appended.write_bytes(b"old")
    with open(appended, "ab") as f:
        eqx_msg.save(f, tree)
    assert appended.read_bytes() == b"old" + expected
    inside = tmp_path / "r.eqx"  # bytes after the position: padding would keep them
    inside.write_bytes(b"\xff" * (len(expected) + 10))
    with open(inside, "r+b") as f:
        eqx_msg.save(f, tree)
        assert f.tell() == len(expected)
    assert inside.read_bytes() == expected + b"\xff" * 10
    assert ways == ["stream", "stream"]


def test_cpu_jax_leaves_alias_the_map(tmp_path):
    path = tmp_path / "z.eqx"
    eqx_msg.save(path, {"w": jnp.arange(1 << 16, dtype=jnp.float32), "small": jnp.ones(3)})
    with eqx_msg.open(path) as reader:
        view = reader["['w']"]
        base, end = (
            reader._file.buf.ctypes.data,
            reader._file.buf.ctypes.data + len(reader._file.buf),
        )
    loaded = eqx_msg.load(path)
    for leaf in loaded.values():
        pointer = leaf.unsafe_buffer_pointer()
        assert pointer % 64 == 0
    # the loaded array's buffer lies inside a map of the same file (a fresh map: compare offsets)
    assert view.ctypes.data >= base and view.ctypes.data < end
    reader2 = eqx_msg.open(path)
    arrays = reader2.load()
    start = reader2._file.buf.ctypes.data
    assert start <= arrays["w"].unsafe_buffer_pointer() < start + len(reader2._file.buf)
    assert start <= arrays["small"].unsafe_buffer_pointer() < start + len(reader2._file.buf)


def test_map_stays_alive_while_arrays_use_it(tmp_path):
    path = tmp_path / "alive.eqx"
    eqx_msg.save(path, {"w": np.arange(100_000, dtype=np.float64)})
    w = eqx_msg.load(path)["w"]
    import gc

    gc.collect()
    assert w[12345] == 12345.0
    os.remove(path)  # the map outlives the name too
    assert w.sum() == np.arange(100_000, dtype=np.float64).sum()


def test_save_is_atomic_on_error(tmp_path):
    path = tmp_path / "keep.eqx"
    eqx_msg.save(path, {"w": np.ones(4)})
    before = path.read_bytes()

    class Boom(eqx.Module):
        w: jax.Array

    class Exploding(np.ndarray):
        pass

    with pytest.raises(eqx_msg.UnserialisableError):
        eqx_msg.save(path, {"w": np.ones(4), "bad": object()})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.eqx"]


def test_crash_mid_save_keeps_previous_file(tmp_path):
    path = tmp_path / "crash.eqx"
    eqx_msg.save(path, {"w": np.ones(4)})
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, numpy as np, eqx_msg
        from eqx_msg import _leaves
        real = _leaves.host_array
        count = [0]
        def dying(record, source):
            count[0] += 1
            if count[0] == 3:
                os._exit(17)  # the process dies mid-write, no cleanup runs
            return real(record, source)
        _leaves.host_array = dying
        eqx_msg.save({str(path)!r}, {{"a": np.zeros(1 << 20), "b": np.zeros(1 << 20), "c": np.zeros(1 << 20)}})
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 17, result.stderr
    assert path.read_bytes() == before
    np.testing.assert_array_equal(eqx_msg.load(path)["w"], np.ones(4))


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "named temporary"])
def test_killed_saves_leave_the_old_or_new_file_and_no_temporary_after_the_next_save(
    tmp_path, unnamed
):
    if unnamed and not eqx_msg.io._atomic._USE_O_TMPFILE:
        pytest.skip("no O_TMPFILE (or no /proc) here: the named-temporary case covers saving")
    path = tmp_path / "m.eqx"
    tree = {f"w{i}": np.full(1 << 18, i, np.float32) for i in range(48)}  # 48 MiB, many writes
    eqx_msg.save(path, tree, metadata={"round": -1})
    script = textwrap.dedent(f"""
        import sys, numpy as np, eqx_msg
        eqx_msg.io._atomic._USE_O_TMPFILE = {unnamed!r}
        tree = {{f"w{{i}}": np.full(1 << 18, i, np.float32) for i in range(48)}}
        print("ready", flush=True)
        for n in range(1000):
            eqx_msg.save({str(path)!r}, tree, metadata={{"round": n}})
    """)
    rng = np.random.default_rng(3)
    for kill in range(6):  # SIGKILL at a random moment of a save: no cleanup of any kind runs
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        loaded = eqx_msg.load(path)  # the old or a new file, complete
        for i in range(48):
            assert float(loaded[f"w{i}"][-1]) == i, (kill, i)
        del loaded
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".eqx-msg-tmp")]
    if unnamed:
        assert leftovers == []  # nothing had a name until the rename
    eqx_msg.save(path, {"w": np.ones(2)})  # the next save clears dead writers' temporaries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx"]


def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path):
    from eqx_msg.io import _atomic as _file

    host, _ = _file._writer_tag().split("~")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    names = {
        "dead": f".a.eqx.{host}~{int(dead.stdout)}.x1.eqx-msg-tmp",
        "alive (the test's parent)": f".a.eqx.{host}~{os.getppid()}.x2.eqx-msg-tmp",
        "alive (this process)": f".b.eqx.{host}~{os.getpid()}.x3.eqx-msg-tmp",
        "another host": f".a.eqx.otherhost~{int(dead.stdout)}.x4.eqx-msg-tmp",
        "an older writer's name": ".a.eqx.k2j4h5.eqx-msg-tmp",
        "not a temporary": f"notes.{host}~{int(dead.stdout)}.x5.txt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    eqx_msg.save(tmp_path / "m.eqx", {"w": np.ones(2)})
    left = {p.name for p in tmp_path.iterdir()}
    assert names["dead"] not in left
    assert left == {"m.eqx"} | {n for k, n in names.items() if k != "dead"}


def test_save_keeps_permissions(tmp_path):
    path = tmp_path / "perm.eqx"
    eqx_msg.save(path, {"w": np.ones(1)})
    os.chmod(path, 0o640)
    eqx_msg.save(path, {"w": np.ones(2)})
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_reader_lazy_access(tmp_path):
    path = tmp_path / "r.eqx"
    model = _model()
    eqx_msg.save(path, model, metadata={"note": "x"})
    with eqx_msg.open(path) as reader:
        assert reader.metadata == {"note": "x"}
        assert ".layers[0].weight" in "".join(reader.keys())
        assert "['table']" in reader and len(reader) == len(reader.keys())
        table = reader["['table']"]
        assert isinstance(table, np.ndarray) and not table.flags.writeable
        np.testing.assert_array_equal(reader.slice("['table']")[10:12, 3], model["table"][10:12, 3])
        weight = reader.get("['decoder'].weight")
        assert isinstance(weight, jax.Array) and jnp.array_equal(weight, model["decoder"].weight)
        abstract = reader.abstract()
        assert jax.tree.structure(abstract) == jax.tree.structure(
            eqx.filter_eval_shape(lambda: model)
        )
        arrays = [x for x in jax.tree.leaves(abstract) if not (callable(x) or isinstance(x, int))]
        assert len(arrays) == len(reader) and all(
            isinstance(x, jax.ShapeDtypeStruct) for x in arrays
        )
        header = reader.header
        assert isinstance(header, eqx_msg.Header) and header.leaves[0].path == reader.keys()[0]
        with pytest.raises(eqx_msg.KeyPathError, match="weigth"):
            reader["['decoder'].weigth"]
        for not_an_array in ("['decoder']", "['step']", "['encoder'].activation"):
            with pytest.raises(eqx_msg.KeyPathError, match="not an array leaf but a container"):
                reader[not_an_array]
    for read in (
        lambda: reader["['table']"],
        lambda: reader.get("['decoder'].weight"),
        lambda: reader.slice("['table']"),
        reader.load,
    ):
        with pytest.raises(eqx_msg.ClosedError, match="the reader is closed"):
            read()
    assert reader.keys() and reader.abstract() is not None  # the header stays readable
    np.testing.assert_array_equal(table, model["table"])  # views taken before close stay valid


def test_reader_abstract_matches_a_load_that_reads_nothing(tmp_path):
    path = tmp_path / "a.eqx"
    tree = {
        **_model(),
        "same": [np.zeros((2, 3), np.float32), jnp.zeros((2, 3)), np.float16(1)],
        "weak": jnp.asarray(1.0),
        "keys": jax.random.split(KEY, 3),
        "shape_only": jax.ShapeDtypeStruct((5,), jnp.bfloat16),
    }
    eqx_msg.save(path, tree)
    with eqx_msg.open(path) as reader:
        abstract = reader.abstract()
        expected = reader.load(filter=lambda _: False)
    assert jax.tree.structure(abstract) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(abstract), jax.tree.leaves(expected)):
        assert type(got) is type(want) and got == want
    assert abstract["weak"].weak_type
    assert abstract["keys"].dtype == jax.eval_shape(lambda: KEY).dtype
    with eqx_msg.open(path) as reader:
        specs = reader.specs()
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    arrays = {jax.tree_util.keystr(p): x for p, x in flat if isinstance(x, jax.ShapeDtypeStruct)}
    assert list(specs) == reader.keys() and specs == arrays
    assert specs["['keys']"].shape == (3,) and specs["['same'][0]"].shape == (2, 3)


def test_reader_load_subtree_with_filter(tmp_path):
    path = tmp_path / "f.eqx"
    model = _model()
    eqx_msg.save(path, model)
    with eqx_msg.open(path) as reader:
        part = reader.load(filter=lambda p: p.startswith("['encoder']"))
    assert isinstance(part["encoder"].layers[0].weight, jax.Array)
    assert isinstance(part["decoder"].weight, jax.ShapeDtypeStruct)
    assert isinstance(part["table"], jax.ShapeDtypeStruct)
    part = eqx_msg.load(
        path, filter={"encoder": False, "decoder": True, "table": False, "i4": False, "step": False}
    )
    assert isinstance(part["decoder"].weight, jax.Array)
    assert isinstance(part["encoder"].layers[1].bias, jax.ShapeDtypeStruct)


def test_load_on_explicit_device(tmp_path):
    path = tmp_path / "d.eqx"
    eqx_msg.save(path, {"w": jnp.ones(3)})
    device = jax.devices()[1]
    w = eqx_msg.load(path, device=device)["w"]
    assert w.devices() == {device}


def test_placement_falls_back_to_device_put_if_jaxlib_changes(tmp_path, monkeypatch):
    from eqx_msg import _place

    def changed_signature(*args):
        raise TypeError("batched_device_put() takes 3 positional arguments")

    monkeypatch.setattr(_place, "_batched_device_put", changed_signature)
    path = tmp_path / "f.eqx"
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "k": jax.random.split(KEY, 2), "n": np.ones(2)}
    eqx_msg.save(path, tree)
    loaded = eqx_msg.load(path)
    assert_same_tree(loaded, tree)
    assert _place._batched_device_put is None  # the public path from now on
    assert_same_tree(eqx_msg.load(path), tree)


def test_load_missing_or_tiny_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        eqx_msg.load(tmp_path / "nope.eqx")
    (tmp_path / "tiny.eqx").write_bytes(b"EQX")
    with pytest.raises(eqx_msg.LengthError):
        eqx_msg.load(tmp_path / "tiny.eqx")


def test_save_peak_memory_is_bounded(tmp_path):
    """Saving a 2 GiB tree of memory-mapped leaves adds at most a few hundred MiB of anonymous RSS.

    Anonymous RSS (`RssAnon`) counts copies the process makes; the pages of the source map and the
    page cache of the written file are file-backed and not counted.
    """
    script = textwrap.dedent(f"""
        import threading, time, os, numpy as np, eqx_msg
        def anon():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("RssAnon")) >> 10
        src = {str(tmp_path / "src.bin")!r}
        n, size = 32, 64 << 20
        with open(src, "wb") as f:
            f.truncate(n * size)
        mm = np.memmap(src, dtype=np.uint8, mode="r")
        tree = {{f"w{{i}}": mm[i * size:(i + 1) * size].view(np.float32) for i in range(n)}}
        base = anon()
        peak = [base]
        done = [False]
        def watch():
            while not done[0]:
                peak[0] = max(peak[0], anon())
                time.sleep(0.002)
        t = threading.Thread(target=watch)
        t.start()
        out = {str(tmp_path / "big.eqx")!r}
        eqx_msg.save(out, tree)
        done[0] = True
        t.join()
        print(peak[0] - base, os.path.getsize(out) >> 20)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    extra_mib, size_mib = map(int, result.stdout.split())
    assert size_mib >= 2048
    assert extra_mib < 300, f"saving 2 GiB took {extra_mib} MiB of extra anonymous memory"


def test_reader_fetches_one_leaf_without_decoding_the_header(tmp_path):
    path = tmp_path / "lazy.eqx"
    tree = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "k": jax.random.key(5), "s": 1}
    eqx_msg.save(path, tree)
    with eqx_msg.open(path) as reader:
        np.testing.assert_array_equal(reader["['a']"], tree["a"])
        assert "['k']" in reader and "['zz']" not in reader
        key = reader.get("['k']")
        assert jax.random.key_impl(key) == jax.random.key_impl(tree["k"])
        with pytest.raises(eqx_msg.KeyPathError, match="zz"):
            reader["['zz']"]
        assert reader.keys() == ["['a']", "['k']"] and len(reader) == 2
        assert jax.tree.structure(reader.load()) == jax.tree.structure(tree)
        assert reader.abstract()["a"].shape == (2, 3)
        file = reader._file  # nothing above needed the records or the header model
        assert file._records is None and file._validated is None and file._metadata is None
        assert reader.metadata is None and file._records is None and file._metadata == (None,)


def test_the_header_is_never_decoded_whole_in_python(tmp_path, monkeypatch):
    # One authority (issue 13): Python's views of the header are built from what Rust decoded;
    # msgpack decodes only the encoded tree, metadata and writer values Rust hands over.
    from eqx_msg import _file

    path = tmp_path / "h.eqx"
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    tree = {"w": jax.device_put(jnp.ones((4, 2)), jax.sharding.NamedSharding(mesh, P("x")))}
    eqx_msg.save(path, tree, metadata={"step": 7, (1, 2): "tuple key"})
    decoded: list[int] = []
    real = _file.msgpack.unpackb
    monkeypatch.setattr(
        _file.msgpack, "unpackb", lambda data, **kw: decoded.append(len(data)) or real(data, **kw)
    )
    with eqx_msg.open(path) as reader:
        header = reader.header
        assert header.metadata == {"step": 7, (1, 2): "tuple key"} == reader.metadata
        assert header.leaves[0].sharding.spec == ["x"]
        assert header.writer["eqx_msg"] == eqx_msg.__version__
        assert header.leaf_crc32c is not None and header.header_crc32c is not None
        core = reader._file.records[0]
        assert header.leaves[0].model_dump() == {
            **core,
            "sharding": header.leaves[0].sharding.model_dump(),
        }
        assert reader.get("['w']", sharding="saved").sharding.spec == P("x")
        header_len = reader._file.header.header_len
    assert decoded and max(decoded) < header_len / 2, (decoded, header_len)


def test_the_header_stays_readable_after_close_even_if_never_read_before(tmp_path):
    path = tmp_path / "h.eqx"
    eqx_msg.save(path, {"w": np.ones(3), "k": jax.random.key(1)}, metadata={"step": 7})
    reader = eqx_msg.open(path)
    reader.close()
    reader.close()  # twice is fine
    assert reader.metadata == {"step": 7} and reader.header.keys() == reader.keys()
    assert set(reader.specs()) == {"['w']", "['k']"}
    with pytest.raises(eqx_msg.ClosedError):
        reader.get("['k']", sharding="saved")
    with pytest.raises(eqx_msg.ClosedError):
        reader["['w']"]


def test_filter_must_be_bools_at_key_paths_of_the_file(tmp_path):
    path = tmp_path / "f.eqx"
    eqx_msg.save(path, {"enc": {"w": np.ones(2)}, "dec": {"w": np.zeros(2)}})
    for bad, match in [("a", "pytree of bools"), ({"enc": 1}, "pytree of bools"),
                       ({"zz": True}, r"not in the file: \[\"\['zz'\]\"\]")]:  # fmt: skip
        with pytest.raises(eqx_msg.KeyPathError, match=match):
            eqx_msg.load(path, filter=bad)
    part = eqx_msg.load(path, filter={"enc": np.True_})
    assert isinstance(part["dec"]["w"], jax.ShapeDtypeStruct)
    np.testing.assert_array_equal(part["enc"]["w"], np.ones(2))


def test_save_keeps_a_symlink(tmp_path):
    real = tmp_path / "real.eqx"
    link = tmp_path / "link.eqx"
    eqx_msg.save(str(real), {"w": np.ones(2)})
    link.symlink_to(real)
    eqx_msg.save(link, {"w": np.zeros(3)})
    assert link.is_symlink() and os.readlink(link) == str(real)
    np.testing.assert_array_equal(eqx_msg.load(real)["w"], np.zeros(3))


@pytest.mark.parametrize("alignment", [-64, 0, 32, 96, 1 << 21, "64", None, 64.0])
def test_a_bad_alignment_is_a_layout_error(alignment, tmp_path):
    for write in (eqx_msg.dumps, lambda t, **kw: eqx_msg.save(tmp_path / "a.eqx", t, **kw)):
        with pytest.raises(eqx_msg.LayoutError, match="power of two"):
            write({"w": np.ones(2)}, alignment=alignment)
    assert not list(tmp_path.iterdir())


def test_masked_arrays_are_refused_rather_than_losing_the_mask():
    with pytest.raises(eqx_msg.UnserialisableError, match="mask"):
        eqx_msg.dumps({"m": np.ma.masked_array([1.0, 2.0], mask=[False, True])})


def test_reader_keys_must_be_strings(tmp_path):
    path = tmp_path / "r.eqx"
    eqx_msg.save(path, [np.ones(2)])
    with eqx_msg.open(path) as reader, pytest.raises(eqx_msg.KeyPathError, match="key path"):
        reader[0]


def test_as_numpy_gives_views_of_every_array_leaf_and_keeps_keys(tmp_path):
    path = tmp_path / "n.eqx"
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.bfloat16(1.5) * jnp.ones(4, jnp.bfloat16),
            "key": jax.random.key(3), "n": np.arange(3), "step": jnp.asarray(7)}  # fmt: skip
    eqx_msg.save(path, tree)
    for loaded in (
        eqx_msg.load(path, as_numpy=True),
        eqx_msg.loads(path.read_bytes(), as_numpy=True),
    ):
        for name in ("w", "b", "n", "step"):
            leaf = loaded[name]
            assert type(leaf) is np.ndarray and not leaf.flags.writeable, name
            assert (
                leaf.dtype == tree[name].dtype
                and leaf.tobytes() == np.asarray(tree[name]).tobytes()
            )
        assert jax.dtypes.issubdtype(loaded["key"].dtype, jax.dtypes.prng_key)  # numpy has no keys
    with eqx_msg.open(path) as reader:
        part = reader.load(as_numpy=True, filter={"w": True})
        assert type(part["w"]) is np.ndarray and isinstance(part["b"], jax.ShapeDtypeStruct)
        with pytest.raises(eqx_msg.ShardingError, match="as_numpy"):
            reader.load(as_numpy=True, device=jax.devices()[0])


def test_save_does_not_follow_a_symlink_someone_else_owns(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "ckpt.eqx"
    link.symlink_to(victim)
    real_getuid = os.getuid
    monkeypatch.setattr(os, "getuid", lambda: real_getuid() + 4242)  # the link is now "theirs"
    eqx_msg.save(link, {"w": np.ones(2)})
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and eqx_msg.load(link)["w"].shape == (2,)


def test_filter_prefixes_may_name_subtrees_without_leaves_and_may_be_modules(tmp_path):
    path = tmp_path / "m.eqx"
    linear = eqx.nn.Linear(2, 3, key=KEY)
    eqx_msg.save(path, {"backbone": linear, "head": eqx.nn.Identity(), "none": None, "empty": {}})
    part = eqx_msg.load(path, filter={"backbone": True, "head": False, "none": False})
    assert isinstance(part["backbone"].weight, jax.Array)
    # Equinox's own filter-spec idiom: a Module of bools (Modules are callable, yet a pytree here).
    spec = eqx.tree_at(lambda m: m.bias, jax.tree.map(lambda _: True, linear), False)
    part = eqx_msg.load(path, filter={"backbone": spec, "head": False})
    assert isinstance(part["backbone"].weight, jax.Array)
    assert isinstance(part["backbone"].bias, jax.ShapeDtypeStruct)
    with pytest.raises(eqx_msg.KeyPathError, match=r"\['backbone'\]\['bais'\]"):
        eqx_msg.load(path, filter={"backbone": {"bais": True}})


def test_reader_repr_names_the_file_and_its_state(tmp_path):
    path = tmp_path / "r.eqx"
    eqx_msg.save(path, {"w": np.ones(3), "b": np.zeros(2)})
    reader = eqx_msg.open(path)
    assert repr(reader) == f"<eqx_msg.Reader {str(path)!r}: 2 array leaves, open>"
    reader.close()
    assert repr(reader).endswith("2 array leaves, closed>")


def test_the_load_options_are_one_set_spelled_out_once(tmp_path):
    from eqx_msg import _options

    names = set(_options.LoadOptions.__annotations__)
    assert names == {f.name for f in dataclasses.fields(_options.Load)}
    for fn in (eqx_msg.load, eqx_msg.loads, eqx_msg.Reader.load):
        doc = fn.__doc__ or ""
        assert "{options}" not in doc
        assert all(f"- `{name}`:" in doc for name in names), fn
    data = eqx_msg.dumps({"w": np.arange(3.0)})
    path = tmp_path / "m.eqx"
    path.write_bytes(data)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['devices'\\]"):
        eqx_msg.load(path, devices=None)
    with pytest.raises(TypeError, match="loads\\(\\)"):
        eqx_msg.loads(data, fliter=None)
    # The same options everywhere: loads filters and verifies, Reader.load verifies.
    assert isinstance(eqx_msg.loads(data, filter=lambda p: False)["w"], jax.ShapeDtypeStruct)
    with eqx_msg.open(path) as reader:
        assert np.array_equal(reader.load(verify=True, as_numpy=True)["w"], np.arange(3.0))
    with pytest.raises(eqx_msg.ShardingError, match="as_numpy"):
        eqx_msg.loads(data, as_numpy=True, device=jax.devices()[0])


def test_bytes_are_contents_so_a_bytes_path_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "m.eqx"
    eqx_msg.save(path, {"w": np.ones(3)})
    with pytest.raises(eqx_msg.MagicError, match="these bytes name a file: pass the path as a str"):
        eqx_msg.open(os.fsencode(path))
    with pytest.raises(eqx_msg.MagicError, match="name a file"):
        eqx_msg.load(os.fsencode(path))
    with pytest.raises(TypeError, match="bytes path"):
        eqx_msg.save(os.fsencode(path), {"w": 1})
    assert np.array_equal(eqx_msg.load(os.fspath(path))["w"], np.ones(3))
