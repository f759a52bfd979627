"""Output folders and atomic files: nothing a user made is lost or half-written."""

import contextlib
import json
import math
import os
import stat
import tempfile

import numpy as np


def check_out_dir(path, force=False, resume=False, hint="pass --force to overwrite its files"):
    """Checks, without creating anything, that `path` can become an output folder.

    Args:
        path: the output folder.
        force: allow a non-empty existing folder. Defaults to `False`.
        resume: allow a non-empty folder because the caller continues work
            recorded there. Defaults to `False`.
        hint: what the user may do about a non-empty folder, besides
            choosing another one. Defaults to the `--force` advice.

    Raises:
        FileExistsError: `path` is a file, or a non-empty folder.
        PermissionError: nothing can be written there.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} is a file; --out needs a folder.")
    if os.path.isdir(path):
        if folder_entries(path) and not (force or resume):
            raise FileExistsError(
                f"{path} already exists and is not empty; choose another --out or {hint}."
            )
        _probe(path, path)
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FileExistsError(f"{parent} is a file, so --out {path} cannot be created there.")
    _probe(parent, path)


def _probe(folder, path):
    """Writes and removes an empty folder in `folder`: the one check that root cannot pass by."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nc_tf_probe_", dir=folder))
    except OSError as error:
        raise PermissionError(
            f"--out {path} is not writable ({error.strerror}); choose a folder you can write to."
        ) from None


def prepare_out_dir(path, force=False, resume=False, hint="pass --force to overwrite its files"):
    """Creates `path`; refuses a non-empty existing folder unless `force` or `resume`.

    Args:
        path: the output folder.
        force: allow writing into a non-empty folder (files of the same
            name are replaced). Defaults to `False`.
        resume: allow a non-empty folder because the caller continues work
            recorded there. Defaults to `False`.
        hint: see `check_out_dir`. Defaults to the `--force` advice.

    Returns:
        `path`.
    """
    check_out_dir(path, force, resume, hint)
    os.makedirs(path, exist_ok=True)
    return os.fspath(path)


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj):
    """Strict JSON text of `obj`: numpy scalars and arrays accepted, NaN and infinities as null.

    Example:

    >>> print(to_json({"accuracy": float("nan")}))
    {
      "accuracy": null
    }
    """
    return json.dumps(_finite(obj), indent=2, default=_default, allow_nan=False)


def _finite(obj):
    """`obj` with every non-finite float (numpy or Python) replaced by `None`."""
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _temporary(path):
    """A new empty file beside `path`, created exclusively under a random name: `(fd, tmp)`."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stem, dot, ext = name.partition(".")
    # the real extension last: Keras, numpy and PIL pick the format from it
    return tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{dot}{ext}", dir=folder)


def _publish(tmp, path):
    """Renames `tmp` onto `path` with the mode `open` would give (a link at `path` is replaced, not followed)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path, mode="w", **open_args):
    """Opens a new file that replaces `path` only once it is completely written.

    The file is created exclusively (`O_EXCL`) under a random name in
    `path`'s folder, so no planted file or symbolic link is ever opened, and
    renamed onto `path` when the block ends without an error; after an error
    `path` is untouched and the temporary file removed. A symbolic link at
    `path` is replaced by the file, never written through.

    Args:
        path: the file to write.
        mode: `"w"` (text) or `"wb"` (bytes). Defaults to `"w"`.
        **open_args: passed to `open` (e.g. `encoding`, `newline`).

    Example:

    >>> with atomic_file("runs/scan/notes.txt") as f:  # doctest: +SKIP
    ...     f.write("done")
    """
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
        _publish(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a fresh temporary path for a writer that takes a file name (Keras).

    As `atomic_file`, for writers that open the file themselves: the path
    names a new empty file created exclusively beside `path`, with the same
    extension, renamed onto `path` when the block ends without an error.

    Example:

    >>> with atomic_path("runs/repair/model.keras") as tmp:  # doctest: +SKIP
    ...     model.save(tmp)
    """
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        yield tmp
        _publish(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    """Writes JSON atomically (`atomic_file`)."""
    with atomic_file(path, encoding="utf-8") as f:
        f.write(to_json(obj))


MAX_JSON_BYTES = 64 * 2**20  # results, summaries and attack files are far smaller


def read_json(path, what="file"):
    """Reads JSON with an error that names the file (a regular file only, see `check_input_file`)."""
    check_input_file(path, what)
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ValueError(
            f"{path} is {os.path.getsize(path) / 2**20:,.0f} MiB, more than any {what} nc-tf "
            f"writes (at most {MAX_JSON_BYTES // 2**20} MiB); pass the file nc-tf wrote."
        )
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"No such {what}: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({str(e).splitlines()[0][:200]}).") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; the {what} is a JSON file.") from None


def save_model(model, path):
    """Saves a Keras model atomically to a `.keras` path."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"Model path must end in .keras, got {path}.")
    with atomic_path(path) as tmp:
        model.save(tmp)


# ------------------------------------------------------------------- inputs
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_input_file(path, what="input file", root=None):
    """Returns `path` when it is a regular file nc-tf may read; raises otherwise.

    Every reader calls this before opening a file: a FIFO would block the
    read forever, a device never ends, and a file listed inside a data set
    or found in a scan folder must not lead out of that folder.

    Args:
        path: the file.
        what: what the file is, for the message (`"model file"`, ...).
            Defaults to `"input file"`.
        root: the folder the file must stay in once symbolic links are
            resolved (a data set's or a scan's folder), or `None`. Defaults
            to `None`.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: it is a folder, pipe, device or socket, or it leads out of `root`.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"No such {what}: {path}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the {what} ({error.strerror}).") from None
    for test, name in _KINDS:
        if test(mode):
            raise ValueError(f"{path} is {name}, not a file; pass the {what} itself.")
    if root is not None:
        real, base = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            raise ValueError(
                f"{path} leads out of {root} (to {real}); nc-tf reads only files inside "
                f"the folder it was given. Replace the link or path with the {what} itself."
            )
    return path


# Uncompressed bytes an input may declare: this much, plus MAX_INPUT_RATIO times
# the file's own size (real image data compresses a few times, a bomb thousands).
MAX_INPUT_BYTES = 256 * 2**20
MAX_INPUT_RATIO = 100
MAX_INPUT_ENV = "NC_TF_MAX_INPUT_BYTES"


def env_bytes(name, default):
    """A byte limit from environment variable `name` (ASCII digits), else `default`."""
    value = os.environ.get(name, "").strip()
    return int(value) if value.isascii() and value.isdigit() else default


def npy_header(f):
    """`(shape, bytes)` that the array of an open `.npy` stream declares, from its header alone."""
    version = np.lib.format.read_magic(f)
    shape, _, dtype = np.lib.format._read_array_header(f, version)
    return tuple(shape), math.prod(shape) * dtype.itemsize


def check_input_bytes(nbytes, path, what="arrays"):
    """Refuses an input that declares more uncompressed bytes than its size allows.

    Checked from headers (zip directories, npy headers, HDF5 shapes) before
    anything is allocated. The limit is `MAX_INPUT_BYTES` plus
    `MAX_INPUT_RATIO` times the file's size, or `$NC_TF_MAX_INPUT_BYTES`.

    Args:
        nbytes: the bytes the file's contents would take once read.
        path: the file.
        what: what those bytes are, for the message. Defaults to `"arrays"`.

    Raises:
        ValueError: over the limit; the message names the environment variable.
    """
    limit = env_bytes(MAX_INPUT_ENV, MAX_INPUT_BYTES + MAX_INPUT_RATIO * os.path.getsize(path))
    if nbytes > limit:
        raise ValueError(
            f"{path} declares {nbytes / 2**20:,.0f} MiB of {what} in a "
            f"{os.path.getsize(path) / 2**20:,.1f} MiB file (limit {limit / 2**20:,.0f} MiB): "
            f"refused as a decompression bomb. If the file is genuine, set {MAX_INPUT_ENV} "
            "to a larger number of bytes."
        )


# Pixels an image file may declare: PIL's own bomb limit only warns below twice its default.
MAX_IMAGE_PIXELS = 4096 * 4096


def open_image(path, what="image", root=None):
    """Opens an image file with PIL after `check_input_file`, refusing oversized images.

    Only the header is read here, so an image that declares more than
    `MAX_IMAGE_PIXELS` pixels is refused before its pixels are decoded.

    Args:
        path: the image file.
        what: what the image is, for messages. Defaults to `"image"`.
        root: see `check_input_file`. Defaults to `None`.

    Returns:
        the open `PIL.Image.Image` (use it in a `with` block).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, outside `root`, unreadable or too large.
    """
    from PIL import Image

    check_input_file(path, what, root)
    try:
        image = Image.open(path)
    except Exception as error:  # PIL raises many types for damaged or hostile files
        raise ValueError(
            f"{path} is not a readable {what} ({str(error).splitlines()[0][:200]})."
        ) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise ValueError(
            f"{path}: the {what} declares {width}x{height} pixels, more than "
            f"{MAX_IMAGE_PIXELS:,}; refused as a decompression bomb."
        )
    return image


def check_npz(path):
    """Refuses an `.npz` whose arrays would take more than `check_input_bytes` allows.

    Reads only the zip directory and each `.npy` member's header: the
    larger of the members' uncompressed sizes and their arrays' declared
    shapes is checked before any array is read.

    Raises:
        ValueError: not a readable zip archive, or over the byte budget.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            declared = sum(member.file_size for member in members)
            shapes = 0
            for member in members:
                if not member.filename.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    shapes += npy_header(f)[1]
    except Exception as error:  # zipfile, zlib and numpy raise many types for damaged files
        raise ValueError(
            f"{path} is not a readable .npz file ({str(error).splitlines()[0][:200]})."
        ) from None
    check_input_bytes(max(declared, shapes), path)


# ------------------------------------------------------------ the --out lock
LOCK_NAME = ".nc_tf.lock"


def folder_entries(path):
    """The names in an output folder, without the lock of the command writing it."""
    return [name for name in os.listdir(path) if name != LOCK_NAME]


@contextlib.contextmanager
def out_lock(path):
    """Holds the output folder for the block: a second command on it is refused, not interleaved.

    Creates `path` if needed and locks `path/.nc_tf.lock` (`filelock`,
    without waiting); the lock file is removed when the block ends.

    Args:
        path: the output folder.

    Raises:
        FileExistsError: another command holds the folder; the message
            says to wait for it or choose another `--out`.

    Example:

    >>> with out_lock("runs/scan"):  # doctest: +SKIP
    ...     pass
    """
    import filelock

    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_NAME)
    if os.path.islink(lock_path):
        os.remove(lock_path)  # a planted link is never followed
    lock = filelock.FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise FileExistsError(
            f"Another nc-tf command is writing to {path}; wait for it to finish, or "
            "choose another --out."
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock_path)  # before the release: no later command locks a removed file
        lock.release()
