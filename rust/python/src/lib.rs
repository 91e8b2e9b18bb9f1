//! `eqx_msg._core`: the thin PyO3 binding of `eqx_msg_core`.
//!
//! Buffers come in as numpy arrays (no copies), work runs with the GIL released, and every
//! `eqx_msg_core::Error` is raised as the class of the same name in `eqx_msg._errors`.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::mem::MaybeUninit;

use eqx_msg_core::{self as eqx, checksum, dtype, subbyte, Error, ErrorKind, Frame, LeafSpec};
use std::os::raw::{c_int, c_void};

use numpy::npyffi::{
    _PyArray_GET_ITEM_DATA, get_type_object, npy_intp, NpyTypes, PyArrayObject,
    NPY_ARRAY_WRITEABLE, PY_ARRAY_API,
};
use numpy::{
    PyArray1, PyArrayDescr, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray1, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyIndexError, PyMemoryError, PyOverflowError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};

/// Rust's allocations (decoded headers: a few per leaf record) go to mimalloc: glibc's heap, once
/// fragmented by a process's many small JAX arrays, made decoding a 10k-leaf header 2-3x slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The exception class of each [`ErrorKind`] (in [`ErrorKind::ALL`] order), looked up once when
/// the module is imported: a class missing from `eqx_msg._errors` fails the import.
static CLASSES: PyOnceLock<Vec<Py<PyAny>>> = PyOnceLock::new();

fn error_classes(py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
    let errors = PyModule::import(py, "eqx_msg._errors")?;
    ErrorKind::ALL
        .iter()
        .map(|kind| match kind {
            ErrorKind::Memory => Ok(py.get_type::<PyMemoryError>().into_any().unbind()),
            _ => Ok(errors.getattr(kind.class_name())?.unbind()),
        })
        .collect()
}

/// Raises the exception class of `kind` with `message`.
fn raise(kind: ErrorKind, message: String) -> PyErr {
    raise_with(kind, message, |_| Ok(()))
}

/// Like [`raise`], then lets `fill` set attributes on the exception.
fn raise_with(
    kind: ErrorKind,
    message: String,
    fill: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<()>,
) -> PyErr {
    Python::attach(|py| {
        let classes = CLASSES.get_or_try_init(py, || error_classes(py));
        let made = classes.and_then(|c| {
            let exc = c[kind as usize].bind(py).call1((message.as_str(),))?;
            fill(&exc)?;
            Ok(exc)
        });
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    })
}

/// The Python exception for an `eqx_msg_core` error. A `ChecksumError` for damaged leaves carries
/// their key paths as `paths`, one for a damaged header `header=True`.
fn py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::LeafChecksums { leaves } => raise_with(ErrorKind::Checksum, message, |exc| {
            let paths: Vec<&str> = leaves.iter().map(|l| l.path.as_str()).collect();
            exc.setattr("paths", paths)
        }),
        Error::HeaderChecksum { .. } => raise_with(ErrorKind::Checksum, message, |exc| {
            exc.setattr("header", true)
        }),
        _ => raise(e.kind(), message),
    }
}

/// The bytes of a 1-D uint8 array, which must be contiguous.
fn u8_slice<'a>(arr: &'a PyReadonlyArray1<'_, u8>, what: &str) -> PyResult<&'a [u8]> {
    arr.as_slice().map_err(|_| {
        raise(
            ErrorKind::Layout,
            format!("{what} must be a C-contiguous 1-D uint8 array"),
        )
    })
}

/// The raw bytes of leaf array `i`: any dtype, but C-contiguous, little-endian, no objects.
fn leaf_slice<'a>(arr: &'a Bound<'_, PyUntypedArray>, i: usize) -> PyResult<&'a [u8]> {
    if !arr.is_c_contiguous() {
        return Err(raise(
            ErrorKind::Layout,
            format!("leaf {i}: array is not C-contiguous (use numpy.ascontiguousarray)"),
        ));
    }
    let descr = arr.dtype();
    if descr.has_object() {
        return Err(raise(
            ErrorKind::DType,
            format!("leaf {i}: arrays holding Python objects cannot be stored"),
        ));
    }
    if descr.byteorder() == b'>' {
        return Err(raise(
            ErrorKind::DType,
            format!("leaf {i}: big-endian array; the format stores little-endian data"),
        ));
    }
    let nbytes = arr
        .shape()
        .iter()
        .try_fold(descr.itemsize(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| raise(ErrorKind::Layout, format!("leaf {i}: array size overflows")))?;
    if nbytes == 0 {
        return Ok(&[]);
    }
    // SAFETY: `arr` is a live numpy array (borrowed for 'a, so it cannot be freed meanwhile);
    // being C-contiguous, its `nbytes` bytes start at its data pointer. numpy refuses to resize
    // a referenced array; only an explicitly unchecked `resize(refcheck=False)` from another
    // thread while the GIL is released could free the memory, which the stub documents as the
    // caller's obligation.
    unsafe {
        let data = (*_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).data;
        Ok(std::slice::from_raw_parts(data.cast::<u8>(), nbytes))
    }
}

/// The raw bytes of every leaf array (`None` stays `None`: abstract leaves).
fn leaf_slices<'a>(
    leaves: &'a [Option<Bound<'_, PyUntypedArray>>],
) -> PyResult<Vec<Option<&'a [u8]>>> {
    leaves
        .iter()
        .enumerate()
        .map(|(i, leaf)| leaf.as_ref().map(|a| leaf_slice(a, i)).transpose())
        .collect()
}

/// A new `bytes` object of `len` bytes whose contents are not yet initialised.
fn bytes_uninit(
    py: Python<'_>,
    len: usize,
) -> PyResult<(Bound<'_, PyBytes>, *mut MaybeUninit<u8>)> {
    let size = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyOverflowError::new_err("the file would be too large for a bytes object"))?;
    // SAFETY: with a NULL source, PyBytes_FromStringAndSize allocates an uninitialised bytes
    // object of `size` bytes (NULL with an exception set on failure, turned into an Err).
    // Nothing else holds a reference yet, so filling it in place is allowed.
    unsafe {
        let ptr = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
        let obj = Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked::<PyBytes>();
        let data = ffi::PyBytes_AsString(ptr).cast::<MaybeUninit<u8>>();
        Ok((obj, data))
    }
}

/// Names of all dtypes the format knows.
#[pyfunction]
fn dtype_names() -> Vec<&'static str> {
    dtype::names().to_vec()
}

/// Bits per stored element of a dtype.
#[pyfunction]
fn dtype_bits(name: &str) -> PyResult<u32> {
    dtype::bits(name).map_err(py_err)
}

/// Bytes needed to store an array of `dtype` and `shape`.
#[pyfunction]
fn storage_nbytes(dtype: &str, shape: Vec<u64>) -> PyResult<u64> {
    dtype::storage_nbytes(dtype, &shape).map_err(py_err)
}

/// Offsets of leaves laid out in order at `alignment`, and the data section length.
#[pyfunction]
fn layout(nbytes: Vec<u64>, alignment: u64) -> PyResult<(Vec<u64>, u64)> {
    eqx::layout::plan(&nbytes, alignment).map_err(py_err)
}

/// What a leaf's `jax.ShapeDtypeStruct` depends on: `(dtype, shape, weak_type, key_impl)`.
type LeafType<'a> = (&'a str, &'a [u64], bool, Option<&'a str>);
/// `FileHeader.leaf_table()`: kinds, offsets, distinct types, and each leaf's type.
type LeafTable<'a> = (
    Vec<&'static str>,
    Vec<Option<u64>>,
    Vec<LeafType<'a>>,
    Vec<usize>,
);

/// A validated file's header, decoded once: what a Python reader asks of it, answered without
/// decoding every leaf record in Python.
#[pyclass(frozen, module = "eqx_msg._core")]
struct FileHeader {
    leaves: Vec<LeafSpec>,
    /// Per leaf, the index of its type (`(dtype, shape, weak_type, key_impl)`) among the distinct ones.
    which: Vec<usize>,
    /// Per distinct type, the first leaf of that type.
    first_of_type: Vec<usize>,
    tree: Vec<u8>,
    /// The encoded `metadata` and `writer` values, if present (and not nil).
    metadata: Option<Vec<u8>>,
    writer: Option<Vec<u8>>,
    /// The header's `leaf_crc32c` bytes and `header_crc32c`, if the file has checksums.
    crcs: Option<(Vec<u8>, u32)>,
    /// The header's `alignment`.
    #[pyo3(get)]
    alignment: u64,
    /// The header's `data_nbytes`.
    #[pyo3(get)]
    data_nbytes: u64,
    /// The prefix and msgpack header as checked at open (a copy: the file may change after).
    head: Vec<u8>,
    file_len: usize,
    /// Length of the msgpack header in bytes.
    #[pyo3(get)]
    header_len: usize,
    /// File offset of the data section.
    #[pyo3(get)]
    data_start: usize,
    /// Whether the file has checksums (FORMAT.md section 9).
    #[pyo3(get)]
    has_checksums: bool,
}

#[pymethods]
impl FileHeader {
    /// Validates a whole file (prefix, header, exact length, header padding) and keeps its decoded
    /// header.
    #[new]
    fn new(py: Python<'_>, buf: PyReadonlyArray1<'_, u8>) -> PyResult<Self> {
        let bytes = u8_slice(&buf, "the file buffer")?;
        py.detach(|| {
            let header = FileHeader::checked(bytes, bytes.len() as u64)?;
            header.padding_of(bytes)?;
            Ok(header)
        })
        .map_err(py_err)
    }

    /// Validates the first bytes of a file of `file_len` bytes that is not in memory: `head` holds
    /// at least its prefix and header (`header_len(head)` says how long that is). The header
    /// padding, which may lie past `head`, is checked by `check_padding` once it has been read.
    #[staticmethod]
    fn from_head(py: Python<'_>, head: PyReadonlyArray1<'_, u8>, file_len: u64) -> PyResult<Self> {
        let head = u8_slice(&head, "the head buffer")?;
        py.detach(|| FileHeader::checked(head, file_len))
            .map_err(py_err)
    }

    /// Checks that the header padding is zero; `head` holds the file's first `data_start` bytes
    /// (or more).
    fn check_padding(&self, head: PyReadonlyArray1<'_, u8>) -> PyResult<()> {
        self.padding_of(u8_slice(&head, "the head buffer")?)
            .map_err(py_err)
    }

    /// The data-section byte range `(start, end)` of each leaf in `indices`; None for abstract
    /// leaves.
    fn ranges(&self, indices: Vec<usize>) -> PyResult<Vec<Option<(u64, u64)>>> {
        indices
            .into_iter()
            .map(|i| {
                let leaf = self.leaves.get(i).ok_or_else(|| {
                    PyIndexError::new_err(format!("leaf {i} of {}", self.leaves.len()))
                })?;
                Ok(leaf.byte_range())
            })
            .collect()
    }

    /// A checker of the data section fed in order, chunk by chunk, for a file that is not in
    /// memory (what `verify` checks for a whole buffer): `NoChecksums` for a file without them.
    fn verifier(slf: Bound<'_, Self>) -> PyResult<DataVerifier> {
        let this = slf.get();
        let head = eqx::parse_head(&this.head, this.file_len as u64).map_err(py_err)?;
        let verifier =
            eqx::StreamVerifier::new(&head.header, this.data_start as u64).map_err(py_err)?;
        Ok(DataVerifier {
            verifier: std::sync::Mutex::new(Some(verifier)),
            header: slf.unbind(),
        })
    }

    /// Checks every byte of the file `buf` against the checksums (all cores, GIL released).
    ///
    /// `ChecksumError` naming every damaged leaf (its `paths`), a nonzero padding byte, or a file
    /// without checksums; any other format error if `buf` is no longer the file that was opened.
    fn verify(&self, py: Python<'_>, buf: PyReadonlyArray1<'_, u8>) -> PyResult<()> {
        let bytes = u8_slice(&buf, "the file buffer")?;
        py.detach(|| eqx::Reader::new(bytes)?.verify())
            .map_err(py_err)
    }

    /// The record (plus its `index`) of the leaf at key path `path`, or None.
    fn find<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((index, leaf)) = LeafSpec::find(&self.leaves, path) else {
            return Ok(None);
        };
        let record = leaf_record(py, leaf)?;
        record.set_item("index", index)?;
        Ok(Some(record))
    }

    /// Every leaf record as the core decoded and checked it, in record order: a dict of the keys
    /// of FORMAT.md section 3 (None where a key is absent; `sharding` only where present).
    fn records<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.leaves
            .iter()
            .map(|leaf| leaf_record(py, leaf))
            .collect()
    }

    /// The encoded msgpack of the header's `metadata`, or None where it is absent or nil.
    fn metadata<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.metadata.as_deref().map(|b| PyBytes::new(py, b))
    }

    /// The encoded msgpack of the header's `writer` map, or None where it is absent or nil.
    fn writer<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.writer.as_deref().map(|b| PyBytes::new(py, b))
    }

    /// `(leaf_crc32c, header_crc32c)` of a file with checksums, else None.
    fn checksums<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyBytes>, u32)> {
        self.crcs
            .as_ref()
            .map(|(leaves, header)| (PyBytes::new(py, leaves), *header))
    }

    /// What rebuilding the leaves needs, in a few Python objects: `(kinds, offsets, types, which)`.
    ///
    /// Per leaf its kind name and data offset (None for abstract leaves); `types` are the distinct
    /// `(dtype, shape, weak_type, key_impl)` of the leaves and `which[i]` is leaf `i`'s among them.
    fn leaf_table(&self) -> LeafTable<'_> {
        let types = self
            .first_of_type
            .iter()
            .map(|&i| {
                let leaf = &self.leaves[i];
                (
                    leaf.dtype.as_str(),
                    leaf.shape.as_slice(),
                    leaf.weak_type,
                    leaf.key_impl.as_deref(),
                )
            })
            .collect();
        let kinds = self.leaves.iter().map(|l| l.kind.name()).collect();
        let offsets = self.leaves.iter().map(|l| l.offset).collect();
        (kinds, offsets, types, self.which.clone())
    }

    /// Leaf data as numpy arrays, for every leaf or for those in `indices`; None for abstract leaves.
    ///
    /// `buf` is the file this header was read from (or a copy); `dtypes[t]` is the numpy dtype of
    /// `leaf_table()`'s type `t`. Each array is a read-only view into `buf`, which it keeps alive,
    /// except for packed sub-byte dtypes: those are unpacked into new read-only arrays.
    ///
    /// With `offset`, `buf` holds only part of the data section, the bytes from data-section
    /// offset `offset` on (a ranged read), and every leaf asked for must lie inside it.
    #[pyo3(signature = (buf, dtypes, indices=None, offset=None))]
    fn arrays<'py>(
        &self,
        py: Python<'py>,
        buf: PyReadonlyArray1<'py, u8>,
        dtypes: Vec<Bound<'py, PyArrayDescr>>,
        indices: Option<Vec<usize>>,
        offset: Option<u64>,
    ) -> PyResult<Vec<Option<Bound<'py, PyAny>>>> {
        let bytes = u8_slice(&buf, "the file buffer")?;
        let (data, window) = match offset {
            None if bytes.len() == self.file_len => (&bytes[self.data_start..], 0),
            None => {
                return Err(raise(
                    ErrorKind::Layout,
                    format!(
                        "the buffer holds {} bytes, the file {}",
                        bytes.len(),
                        self.file_len
                    ),
                ))
            }
            Some(offset) => (bytes, offset),
        };
        let packed = self.check_dtypes(&dtypes)?;
        let base = buf.as_any();
        let mut dims = Vec::with_capacity(eqx::MAX_NDIM);
        let mut array = |i: usize| -> PyResult<Option<Bound<'py, PyAny>>> {
            let leaf = self.leaves.get(i).ok_or_else(|| {
                PyIndexError::new_err(format!("leaf {i} of {}", self.leaves.len()))
            })?;
            let Some((start, end)) = leaf.byte_range() else {
                return Ok(None);
            };
            // Validated header: the range lies inside the data section; `data` may hold only a part.
            let range = start
                .checked_sub(window)
                .zip(end.checked_sub(window))
                .and_then(|(s, e)| Some((usize::try_from(s).ok()?, usize::try_from(e).ok()?)))
                .and_then(|(s, e)| data.get(s..e))
                .ok_or_else(|| {
                    raise(
                        ErrorKind::Layout,
                        format!("leaf {i}: bytes outside the buffer given"),
                    )
                })?;
            let t = self.which[i];
            // numpy refuses a shape whose nonzero dimensions times the item size pass isize,
            // even with no elements (a zero dimension does not excuse the others); say so here,
            // as an eqx_msg error.
            let itemsize = dtypes[t].itemsize() as u64;
            let fits_numpy = leaf
                .shape
                .iter()
                .filter(|&&d| d != 0)
                .try_fold(itemsize.max(1), |acc, &d| acc.checked_mul(d))
                .is_some_and(|size| size <= isize::MAX as u64);
            if !fits_numpy {
                return Err(raise(
                    ErrorKind::Limit,
                    format!(
                        "leaf {i}: shape {:?} is too large for a numpy array on this platform",
                        leaf.shape
                    ),
                ));
            }
            dims.clear();
            dims.extend(leaf.shape.iter().map(|&d| d as npy_intp)); // each <= isize::MAX, above
            match packed[t] {
                None => new_view(py, &dtypes[t], &mut dims, range, base).map(Some),
                Some(bits) => new_unpacked(py, &dtypes[t], &mut dims, range, bits).map(Some),
            }
        };
        match indices {
            None => (0..self.leaves.len()).map(&mut array).collect(),
            Some(indices) => indices.into_iter().map(&mut array).collect(),
        }
    }

    /// The key path of every leaf, in file order.
    fn paths(&self) -> Vec<&str> {
        self.leaves.iter().map(|l| l.path.as_str()).collect()
    }

    /// The encoded msgpack of the header's `tree` value.
    fn tree<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.tree)
    }
}

impl FileHeader {
    /// Checks the framing of a file of `file_len` bytes whose first bytes are `bytes` (the whole
    /// file, or at least its prefix and header), and keeps the decoded header and a copy of the
    /// prefix and header. The copy is made before it is checked, and only it is used afterwards:
    /// a shared map edited after open cannot make later reads disagree with what was checked.
    fn checked(bytes: &[u8], file_len: u64) -> eqx::Result<FileHeader> {
        let (_, header_len) = eqx::parse_prefix(bytes)?;
        let end = (eqx::PREFIX_LEN as u64)
            .saturating_add(header_len)
            .min(bytes.len() as u64) as usize; // <= bytes.len()
        let head = bytes[..end].to_vec();
        let file_len_usize = usize::try_from(file_len).map_err(|_| Error::FileLength {
            expected: usize::MAX as u64,
            actual: file_len,
        })?;
        let parsed = eqx::parse_head(&head, file_len)?;
        let has_checksums = parsed.header.checksums.is_some();
        let (header_len, data_start, header) =
            (parsed.header_len, parsed.data_start, parsed.header);
        let (which, first_of_type) = leaf_types(&header.leaves);
        let crcs = header.checksums.map(|sums| {
            let leaves = (0..header.leaves.len())
                .flat_map(|i| sums.leaf(i).unwrap_or(0).to_le_bytes())
                .collect();
            (leaves, sums.header)
        });
        let metadata = header.metadata.filter(|v| !v.is_nil());
        let (metadata, writer) = (
            metadata.map(|v| v.as_bytes().to_vec()),
            header.writer.map(|v| v.as_bytes().to_vec()),
        );
        let (alignment, data_nbytes) = (header.alignment, header.data_nbytes);
        let (tree, leaves) = (header.tree.as_bytes().to_vec(), header.leaves);
        Ok(FileHeader {
            head, // (parse_head checked it ends where the header does)
            tree,
            metadata,
            writer,
            crcs,
            alignment,
            data_nbytes,
            leaves,
            which,
            first_of_type,
            file_len: file_len_usize,
            header_len,
            data_start,
            has_checksums,
        })
    }

    /// Checks the header padding in `head`, the file's first `data_start` bytes or more.
    fn padding_of(&self, head: &[u8]) -> eqx::Result<()> {
        eqx::Head::padding(head, eqx::PREFIX_LEN + self.header_len, self.data_start)
    }

    /// Checks that `dtypes[t]` can hold type `t`'s bytes; per type, its packed bit width or None.
    ///
    /// This is what makes `arrays` memory-safe: a view never covers more bytes than its leaf has.
    fn check_dtypes(&self, dtypes: &[Bound<'_, PyArrayDescr>]) -> PyResult<Vec<Option<u32>>> {
        if dtypes.len() != self.first_of_type.len() {
            return Err(raise(
                ErrorKind::Layout,
                format!(
                    "{} dtypes given for {} leaf types",
                    dtypes.len(),
                    self.first_of_type.len()
                ),
            ));
        }
        dtypes
            .iter()
            .zip(&self.first_of_type)
            .map(|(descr, &i)| {
                let leaf = &self.leaves[i];
                let bits = dtype::bits(&leaf.dtype).map_err(py_err)?;
                let itemsize = descr.itemsize() as u64;
                // A size that overflows belongs to abstract leaves only (validation refuses it
                // for leaves with bytes), which get no array: only the kind of dtype matters.
                let fits = match dtype::storage_nbytes(&leaf.dtype, &leaf.shape) {
                    _ if bits < 8 => itemsize == 1,
                    Ok(nbytes) => {
                        dtype::element_count(&leaf.shape)
                            .and_then(|count| count.checked_mul(itemsize))
                            == Some(nbytes)
                    }
                    Err(_) => itemsize == u64::from(bits / 8),
                };
                if descr.has_object() || !fits {
                    return Err(raise(
                        ErrorKind::DType,
                        format!(
                            "leaf {i}: numpy dtype {} does not fit {} data of shape {:?}",
                            descr, leaf.dtype, leaf.shape
                        ),
                    ));
                }
                Ok((bits < 8).then_some(bits))
            })
            .collect()
    }
}

/// Checks the data section of a file read in chunks against its checksums (`FileHeader.verifier`).
#[pyclass(frozen, module = "eqx_msg._core")]
struct DataVerifier {
    /// None once finished.
    verifier: std::sync::Mutex<Option<eqx::StreamVerifier>>,
    header: Py<FileHeader>,
}

#[pymethods]
impl DataVerifier {
    /// Bytes of the data section still to be fed.
    #[getter]
    fn remaining(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |v| Ok(v.remaining()))
    }

    /// Feeds the next bytes of the data section (GIL released); `LayoutError` past its end.
    fn feed(&self, py: Python<'_>, chunk: PyReadonlyArray1<'_, u8>) -> PyResult<()> {
        let bytes = u8_slice(&chunk, "the chunk")?;
        self.with(py, |v| v.feed(bytes))
    }

    /// Once every byte has been fed: `ChecksumError` naming every damaged leaf, else the first
    /// nonzero padding byte.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let leaves = &self.header.get().leaves;
        py.detach(|| {
            let taken = self.verifier.lock().ok().and_then(|mut v| v.take());
            taken.map(|verifier| verifier.finish(leaves))
        })
        .ok_or_else(unusable)?
        .map_err(py_err)
    }
}

impl DataVerifier {
    /// Runs `f` on the verifier with the GIL released. The lock is taken only once the GIL is
    /// released, so a thread waiting for it never holds the GIL the holder needs back.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut eqx::StreamVerifier) -> eqx::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut guard = self.verifier.lock().ok()?;
            guard.as_mut().map(f)
        })
        .ok_or_else(unusable)?
        .map_err(py_err)
    }
}

/// The error for a verifier used after `finish` (or after a feed panicked).
fn unusable() -> PyErr {
    raise(
        ErrorKind::Layout,
        "the verifier has finished already".into(),
    )
}

/// A leaf record as a dict of FORMAT.md section 3's keys (None where absent; `sharding` only
/// where present, as a dict of its keys).
fn leaf_record<'py>(py: Python<'py>, leaf: &LeafSpec) -> PyResult<Bound<'py, PyDict>> {
    let record = PyDict::new(py);
    record.set_item("path", &leaf.path)?;
    record.set_item("kind", leaf.kind.name())?;
    record.set_item("dtype", &leaf.dtype)?;
    record.set_item("shape", &leaf.shape)?;
    record.set_item("offset", leaf.offset)?;
    record.set_item("nbytes", leaf.nbytes)?;
    record.set_item("weak_type", leaf.weak_type)?;
    record.set_item("key_impl", &leaf.key_impl)?;
    if let Some(sharding) = &leaf.sharding {
        let record_of = PyDict::new(py);
        record_of.set_item("mesh_axes", &sharding.mesh_axes)?;
        record_of.set_item("mesh_shape", &sharding.mesh_shape)?;
        record_of.set_item("device_ids", &sharding.device_ids)?;
        let spec = sharding
            .spec
            .iter()
            .map(|entry| -> PyResult<Bound<'py, PyAny>> {
                Ok(match entry {
                    eqx::SpecEntry::Replicated => py.None().into_bound(py),
                    eqx::SpecEntry::Axis(name) => name.into_pyobject(py)?.into_any(),
                    eqx::SpecEntry::Axes(names) => names.into_pyobject(py)?.into_any(),
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        record_of.set_item("spec", spec)?;
        record_of.set_item("memory_kind", &sharding.memory_kind)?;
        record.set_item("sharding", record_of)?;
    }
    Ok(record)
}

/// Per leaf, the index of its `(dtype, shape, weak_type, key_impl)` among the distinct ones; and
/// per distinct one, its first leaf.
fn leaf_types(leaves: &[LeafSpec]) -> (Vec<usize>, Vec<usize>) {
    let mut first = Vec::new();
    let mut seen = HashMap::new();
    let which = leaves
        .iter()
        .enumerate()
        .map(|(i, leaf)| {
            let t = (
                leaf.dtype.as_str(),
                leaf.shape.as_slice(),
                leaf.weak_type,
                leaf.key_impl.as_deref(),
            );
            *seen.entry(t).or_insert_with(|| {
                first.push(i);
                first.len() - 1
            })
        })
        .collect();
    (which, first)
}

/// A new C-contiguous, writable ndarray of `descr` and `dims` over `data`; over new, uninitialised
/// memory that numpy allocates (and the array owns) when `data` is null.
///
/// # Safety
/// A non-null `data` must point to `prod(dims) * descr.itemsize` bytes that outlive the array.
unsafe fn new_array<'py>(
    py: Python<'py>,
    descr: &Bound<'py, PyArrayDescr>,
    dims: &mut [npy_intp],
    data: *mut c_void,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: PyArray_NewFromDescr steals the descr reference we pass (a new one, from
    // `into_dtype_ptr`) and reads `dims.len()` dimensions; with null strides the array is
    // C-contiguous, over `data` (the caller's promise) or over memory numpy allocates. A null
    // result (with an exception set) becomes an Err.
    unsafe {
        let ptr = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            get_type_object(py, NpyTypes::PyArray_Type),
            descr.clone().into_dtype_ptr(),
            dims.len() as c_int,
            dims.as_mut_ptr(),
            std::ptr::null_mut(),
            data,
            0,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, ptr)
    }
}

/// A read-only array of `descr` and `dims` over `bytes`, which lie inside `base`'s buffer.
///
/// The caller has checked that `bytes` holds exactly `prod(dims) * itemsize` bytes.
fn new_view<'py>(
    py: Python<'py>,
    descr: &Bound<'py, PyArrayDescr>,
    dims: &mut [npy_intp],
    bytes: &[u8],
    base: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the caller checked that `bytes` holds exactly what the array covers; they stay
    // valid as long as `base`, which the array keeps alive (below).
    let array = unsafe { new_array(py, descr, dims, bytes.as_ptr() as *mut c_void)? };
    // SAFETY: `array` is the new ndarray above, referenced only here. Clearing WRITEABLE is how
    // numpy marks an array read-only. PyArray_SetBaseObject steals the new reference to `base`
    // (also on failure), which keeps `bytes` alive as long as the array.
    unsafe {
        let arr = array.as_ptr().cast::<PyArrayObject>();
        (*_PyArray_GET_ITEM_DATA(arr)).flags &= !NPY_ARRAY_WRITEABLE;
        if PY_ARRAY_API.PyArray_SetBaseObject(py, arr, base.clone().into_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(array)
}

/// A new read-only array of `descr` (one byte per element) and `dims`, unpacked from `packed`.
fn new_unpacked<'py>(
    py: Python<'py>,
    descr: &Bound<'py, PyArrayDescr>,
    dims: &mut [npy_intp],
    packed: &[u8],
    bits: u32,
) -> PyResult<Bound<'py, PyAny>> {
    // The caller checked that the dimensions multiply within isize (numpy's limit too).
    let count: usize = dims.iter().map(|&d| d as usize).product();
    // SAFETY: with null data numpy allocates the array's own memory (uninitialised, written below).
    let array = unsafe { new_array(py, descr, dims, std::ptr::null_mut())? };
    // SAFETY: the new array owns `count` contiguous bytes at its data pointer and nothing else
    // references it yet. They are zeroed before a `&mut [u8]` is made over them (a slice of
    // initialised bytes), then `unpack` writes every one of them.
    unsafe {
        let fields = _PyArray_GET_ITEM_DATA(array.as_ptr().cast::<PyArrayObject>());
        std::ptr::write_bytes((*fields).data.cast::<u8>(), 0, count);
        let out = std::slice::from_raw_parts_mut((*fields).data.cast::<u8>(), count);
        subbyte::unpack(bits, packed, count, out).map_err(py_err)?;
        (*fields).flags &= !NPY_ARRAY_WRITEABLE;
    }
    Ok(array)
}

/// A copy of `buf` starting at a multiple of `alignment`: `(array, offset)`, the copy being
/// `array[offset:offset + len(buf)]`. Parallel, GIL released; for placing leaves of a misaligned
/// buffer (a `bytes` object's data is never 64-byte aligned) where XLA aliases aligned memory.
#[pyfunction]
fn aligned_copy<'py>(
    py: Python<'py>,
    buf: PyReadonlyArray1<'_, u8>,
    alignment: usize,
) -> PyResult<(Bound<'py, PyArray1<u8>>, usize)> {
    if !alignment.is_power_of_two() || alignment > eqx::MAX_ALIGNMENT as usize {
        return Err(raise(
            ErrorKind::Layout,
            format!(
                "alignment {alignment} is not a power of two up to {}",
                eqx::MAX_ALIGNMENT
            ),
        ));
    }
    let src = u8_slice(&buf, "the file buffer")?;
    // A live buffer's length fits in isize, and alignment is at most 1 MiB: no overflow in numpy.
    let total = src.len() + alignment;
    let mut dims = [total as npy_intp];
    // Allocated by numpy, not by Rust's allocator: a large copy must come from (and go back to)
    // the OS like any numpy array, not stay cached in mimalloc after the array is freed.
    // SAFETY: null data: numpy allocates the array's own `total` bytes (a failure is an Err,
    // MemoryError). They are uninitialised; all are written below before the array is returned,
    // and nothing else references it meanwhile.
    let out = unsafe { new_array(py, &numpy::dtype::<u8>(py), &mut dims, std::ptr::null_mut())? };
    let out = out.cast_into::<PyArray1<u8>>()?;
    // SAFETY: `out` is a new C-contiguous array of `total` one-byte elements owned by us alone;
    // viewing its memory as MaybeUninit bytes makes no claim about its contents.
    let spare =
        unsafe { std::slice::from_raw_parts_mut(out.data().cast::<MaybeUninit<u8>>(), total) };
    let offset = (spare.as_ptr() as usize).wrapping_neg() & (alignment - 1);
    let (head, rest) = spare.split_at_mut(offset);
    let (body, tail) = rest.split_at_mut(src.len());
    head.fill(MaybeUninit::new(0));
    tail.fill(MaybeUninit::new(0));
    py.detach(|| eqx::parallel_copy(src, body))
        .map_err(py_err)?;
    Ok((out, offset))
}

/// The length `H` of the msgpack header a file's 16-byte prefix states (magic and version
/// checked): a reader that is not mapped reads bytes `0..16 + H` next.
#[pyfunction]
fn header_len(prefix: &[u8]) -> PyResult<u64> {
    eqx::parse_prefix(prefix).map(|(_, h)| h).map_err(py_err)
}

/// Length of the whole file an encoded header describes (validating the header).
#[pyfunction]
fn total_len(py: Python<'_>, header: &[u8]) -> PyResult<u64> {
    py.detach(|| eqx::total_len(header)).map_err(py_err)
}

/// The frame of a file to be streamed: a validated header (checksum entries added) and where the
/// data goes; its front (prefix, sealed header, padding) is made once the leaves' CRCs are known.
#[pyclass(frozen, module = "eqx_msg._core")]
struct FileFrame {
    /// The front with empty checksum slots, made (and the header validated) once.
    front: eqx::Front,
    /// Number of leaf records.
    #[pyo3(get)]
    leaf_count: usize,
    /// File offset of the data section.
    #[pyo3(get)]
    data_start: u64,
    /// Length of the whole file.
    #[pyo3(get)]
    total_len: u64,
}

#[pymethods]
impl FileFrame {
    /// Validates an encoded header (one without checksum entries).
    #[new]
    fn new(py: Python<'_>, header: &[u8]) -> PyResult<Self> {
        py.detach(|| {
            let frame = Frame::new(header)?;
            Ok(FileFrame {
                front: frame.unsealed_front(),
                leaf_count: frame.header().leaves.len(),
                data_start: frame.data_start(),
                total_len: frame.total_len(),
            })
        })
        .map_err(py_err)
    }

    /// Prefix, sealed header and zero padding (the file's first `data_start` bytes), given the
    /// CRC32C of every leaf's bytes in record order (0 for abstract leaves).
    fn front<'py>(&self, py: Python<'py>, leaf_crcs: Vec<u32>) -> PyResult<Bound<'py, PyBytes>> {
        let front = py
            .detach(|| self.front.sealed(&leaf_crcs))
            .map_err(py_err)?;
        Ok(PyBytes::new(py, &front))
    }
}

/// The CRC32C of `data`'s bytes (any C-contiguous array), continuing from `crc` (GIL released).
#[pyfunction]
#[pyo3(signature = (data, crc=0))]
fn crc32c(py: Python<'_>, data: Bound<'_, PyUntypedArray>, crc: u32) -> PyResult<u32> {
    let bytes = leaf_slice(&data, 0)?;
    Ok(py.detach(|| checksum::append(crc, bytes)))
}

/// The CRC32C of `a ++ b`, given the CRC32C of each and the length of `b`.
#[pyfunction]
fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    checksum::combine(crc_a, crc_b, len_b)
}

/// The open file `fd` as a `File` that is never closed here: Python owns the descriptor.
#[cfg(unix)]
fn borrowed_file(fd: i32) -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller passes a descriptor it keeps open for the whole call; ManuallyDrop
    // keeps the File from closing it, so ownership never really moves.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Writes `data`'s bytes at file offset `offset` of the open file `fd` (positional writes, by
/// several threads, GIL released); returns their CRC32C. `OSError` as the write reports it.
#[cfg(unix)]
#[pyfunction]
fn write_leaf(
    py: Python<'_>,
    fd: i32,
    offset: u64,
    data: Bound<'_, PyUntypedArray>,
) -> PyResult<u32> {
    let bytes = leaf_slice(&data, 0)?;
    let file = borrowed_file(fd);
    Ok(py.detach(|| eqx::positional::write_at(&file, offset, bytes))?)
}

/// Writes the data-section range `[base, base + length)`, each of `leaves` at its `offsets`
/// entry and zeros between, at file offset `file_offset` of `fd` in one positional write;
/// returns each leaf's CRC32C.
#[cfg(unix)]
#[pyfunction]
fn write_gathered<'py>(
    py: Python<'py>,
    fd: i32,
    file_offset: u64,
    base: u64,
    length: usize,
    offsets: Vec<u64>,
    leaves: Vec<Bound<'py, PyUntypedArray>>,
) -> PyResult<Vec<u32>> {
    let segments = segments(&offsets, &leaves)?;
    let file = borrowed_file(fd);
    let written = py
        .detach(|| eqx::positional::write_gathered(&file, file_offset, &segments, base, length))
        .map_err(py_err)?;
    Ok(written?)
}

/// `(offset, bytes)` of each leaf, for the range writers.
fn segments<'a>(
    offsets: &[u64],
    leaves: &'a [Bound<'_, PyUntypedArray>],
) -> PyResult<Vec<(u64, &'a [u8])>> {
    if offsets.len() != leaves.len() {
        return Err(raise(
            ErrorKind::Layout,
            format!("{} offsets for {} leaves", offsets.len(), leaves.len()),
        ));
    }
    offsets
        .iter()
        .zip(leaves)
        .enumerate()
        .map(|(k, (&offset, leaf))| Ok((offset, leaf_slice(leaf, k)?)))
        .collect()
}

/// The whole file, assembled in one allocation with the GIL released.
#[pyfunction]
fn assemble<'py>(
    py: Python<'py>,
    header: &[u8],
    leaves: Vec<Option<Bound<'py, PyUntypedArray>>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let frame = py.detach(|| Frame::new(header)).map_err(py_err)?;
    let slices = leaf_slices(&leaves)?;
    let len = usize::try_from(frame.total_len())
        .map_err(|_| PyOverflowError::new_err("the file would not fit in memory"))?;
    let (obj, data) = bytes_uninit(py, len)?;
    // SAFETY: `data` points to the `len` bytes of `obj`, which we own and nobody else sees.
    let out = unsafe { std::slice::from_raw_parts_mut(data, len) };
    py.detach(|| frame.write_into_uninit(&slices, out))
        .map_err(py_err)?;
    // `leaves` (and so every array behind `slices`) stayed referenced until here.
    drop(leaves);
    Ok(obj)
}

/// Writes the whole file into the start of `out` (a writable uint8 array); returns its length.
///
/// Bytes of `out` past the file are left as they were. No leaf may lie inside `out`.
#[pyfunction]
fn assemble_into<'py>(
    py: Python<'py>,
    header: &[u8],
    leaves: Vec<Option<Bound<'py, PyUntypedArray>>>,
    out: Bound<'py, PyArray1<u8>>,
) -> PyResult<usize> {
    let frame = py.detach(|| Frame::new(header)).map_err(py_err)?;
    let slices = leaf_slices(&leaves)?;
    let len = usize::try_from(frame.total_len())
        .ok()
        .filter(|&len| len <= out.len())
        .ok_or_else(|| {
            raise(
                ErrorKind::Length,
                format!(
                    "the file takes {} bytes, the buffer holds only {}",
                    frame.total_len(),
                    out.len()
                ),
            )
        })?;
    let mut target = out.try_readwrite().map_err(|_| {
        raise(
            ErrorKind::Layout,
            "the output buffer is read-only or already in use".into(),
        )
    })?;
    // No leaf may overlap any of `out` (not only the file's part): `as_slice_mut` below makes a
    // `&mut` over all of it while the leaf slices are alive.
    let (start, end) = (out.data() as usize, out.data() as usize + out.len());
    for (i, s) in slices.iter().enumerate() {
        if let Some(s) = s.filter(|s| !s.is_empty()) {
            let leaf = s.as_ptr() as usize;
            if leaf < end && start < leaf + s.len() {
                return Err(raise(
                    ErrorKind::Layout,
                    format!("leaf {i} lies inside the output buffer; dump it elsewhere"),
                ));
            }
        }
    }
    let dst = target.as_slice_mut().map_err(|_| {
        raise(
            ErrorKind::Layout,
            "the output buffer must be C-contiguous".into(),
        )
    })?;
    // No leaf overlaps `dst` (checked above), so the shared and the mutable slices are disjoint.
    py.detach(|| frame.write_into(&slices, &mut dst[..len]))
        .map_err(py_err)?;
    drop(leaves);
    Ok(len)
}

/// Data-section bytes `[base, base + length)`: leaf `k`'s bytes at `offsets[k]`, zeros elsewhere;
/// and each leaf's CRC32C.
///
/// Offsets must be increasing and the leaves must not overlap or leave the range (`LayoutError`).
#[pyfunction]
fn write_range<'py>(
    py: Python<'py>,
    base: u64,
    length: usize,
    offsets: Vec<u64>,
    leaves: Vec<Bound<'py, PyUntypedArray>>,
) -> PyResult<(Bound<'py, PyBytes>, Vec<u32>)> {
    let segments = segments(&offsets, &leaves)?;
    let mut crcs = Vec::new();
    let block = PyBytes::new_with(py, length, |out| {
        crcs = py
            .detach(|| eqx::write_range(&segments, base, out))
            .map_err(py_err)?;
        Ok(())
    })?;
    Ok((block, crcs))
}

/// Packs one-byte-per-element 4- or 2-bit values, `8 / bits` to a byte.
#[pyfunction]
fn pack_subbyte<'py>(
    py: Python<'py>,
    src: PyReadonlyArray1<'_, u8>,
    bits: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let src = u8_slice(&src, "src")?;
    let len = subbyte::packed_len(bits, src.len()).map_err(py_err)?;
    PyBytes::new_with(py, len, |out| {
        py.detach(|| subbyte::pack(bits, src, out)).map_err(py_err)
    })
}

/// Unpacks `count` 4- or 2-bit values into one byte each.
#[pyfunction]
fn unpack_subbyte<'py>(
    py: Python<'py>,
    src: PyReadonlyArray1<'_, u8>,
    bits: u32,
    count: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let src = u8_slice(&src, "src")?;
    PyBytes::new_with(py, count, |out| {
        py.detach(|| subbyte::unpack(bits, src, count, out))
            .map_err(py_err)
    })
}

/// The extension module `eqx_msg._core`.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    CLASSES.get_or_try_init(py, || error_classes(py))?;
    m.add("MAGIC", PyBytes::new(py, eqx::MAGIC))?;
    m.add("VERSION", eqx::VERSION)?;
    m.add("PREFIX_LEN", eqx::PREFIX_LEN)?;
    m.add("MIN_ALIGNMENT", eqx::MIN_ALIGNMENT)?;
    m.add("MAX_ALIGNMENT", eqx::MAX_ALIGNMENT)?;
    m.add("MAX_HEADER_LEN", eqx::MAX_HEADER_LEN)?;
    m.add("MAX_DEPTH", eqx::MAX_DEPTH)?;
    m.add("MAX_NDIM", eqx::MAX_NDIM)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(dtype_names, m)?)?;
    m.add_function(wrap_pyfunction!(dtype_bits, m)?)?;
    m.add_function(wrap_pyfunction!(storage_nbytes, m)?)?;
    m.add_function(wrap_pyfunction!(layout, m)?)?;
    m.add_class::<FileHeader>()?;
    m.add_class::<DataVerifier>()?;
    m.add_function(wrap_pyfunction!(header_len, m)?)?;
    m.add_function(wrap_pyfunction!(aligned_copy, m)?)?;
    m.add_function(wrap_pyfunction!(total_len, m)?)?;
    m.add_class::<FileFrame>()?;
    m.add_function(wrap_pyfunction!(crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(crc32c_combine, m)?)?;
    #[cfg(unix)]
    m.add_function(wrap_pyfunction!(write_leaf, m)?)?;
    #[cfg(unix)]
    m.add_function(wrap_pyfunction!(write_gathered, m)?)?;
    m.add_function(wrap_pyfunction!(assemble, m)?)?;
    m.add_function(wrap_pyfunction!(assemble_into, m)?)?;
    m.add_function(wrap_pyfunction!(write_range, m)?)?;
    m.add_function(wrap_pyfunction!(pack_subbyte, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_subbyte, m)?)?;
    Ok(())
}
