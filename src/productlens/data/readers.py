"""Catalog and query readers: csv manifests, ImageFolder trees, products.jsonl.

Relative image paths are resolved against the folder that holds the manifest;
absolute paths and URLs are kept as they are.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterator

from productlens.types import Box, BoxError, InvalidBox, Item, ProductLensError

# .jfif and .jpe: JPEGs as some browsers and Windows save them
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

_GALLERY_COLUMNS = ("seller_img_id", "img_path")
_QUERY_COLUMNS = ("user_img_id", "img_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h")
_BOX_COLUMNS = _QUERY_COLUMNS[2:]
_URL_PREFIXES = ("http://", "https://", "file://")
# folders that tools add beside the photos: __MACOSX holds a Mac zip's resource forks ("._name.jpg")
IGNORED_FOLDERS = frozenset({"__MACOSX"})

log = logging.getLogger(__name__)


def read_gallery(csv_path: str | os.PathLike[str], *, skipped: list[str] | None = None) -> list[Item]:
    """Read an AIcrowd gallery csv: ``seller_img_id, img_path[, product_id]``.

    ``product_id`` is optional (-1 marks a distractor); ``title`` (or
    ``product_name``) and ``category_name`` (or ``category``) columns fill the
    item's title and category; other columns go to ``extra``. A row with no image
    path is left out with a warning that names its line (:func:`_without_missing`), and
    one message for it is added to ``skipped`` when a list is given.
    """
    path = Path(csv_path)
    header = set(_header(path))
    title_col = next((c for c in ("title", "product_name") if c in header), None)
    category_col = next((c for c in ("category_name", "category") if c in header), None)
    items = []
    first_line: dict[int, int] = {}  # item id -> the line that gave it
    missing: list[int] = []
    for line, row in _rows(path, _GALLERY_COLUMNS):
        if not row["img_path"].strip():
            missing.append(line)
            continue
        item_id = _int(row["seller_img_id"], "seller_img_id", path, line)
        if not 0 <= item_id < 2 ** 63:
            raise ProductLensError(f"{path}, line {line}: seller_img_id must be from 0 to 2**63 - 1, got {item_id}")
        if item_id in first_line:
            raise ProductLensError(f"{path}, line {line}: seller_img_id {item_id} is on line {first_line[item_id]} "
                                   "too; each photo needs its own id")
        first_line[item_id] = line
        items.append(
            Item(
                id=item_id,
                image=_image(row["img_path"], path, line),
                product_id=_opt_int(row.get("product_id"), "product_id", path, line),
                title=row[title_col].strip() if title_col else "",
                category=row[category_col].strip() if category_col else "",
                extra=_extra(row, {*_GALLERY_COLUMNS, "product_id", title_col, category_col} - {None}),
            )
        )
    return _without_missing(items, missing, path, skipped)


def read_queries(csv_path: str | os.PathLike[str]) -> list[Item]:
    """Read an AIcrowd queries csv: ``user_img_id, img_path, bbox_x, bbox_y, bbox_w, bbox_h[, product_id]``.

    Empty box cells mean the whole image (``box=None``). A row whose box cannot be
    read, or that names no image, keeps its place with an
    :class:`~productlens.types.InvalidBox`: that query is reported and skipped when it
    is embedded, and the others go on.
    """
    path = Path(csv_path)
    items = []
    for line, row in _rows(path, _QUERY_COLUMNS):
        try:
            box = Box.parse([row[c] for c in _BOX_COLUMNS])
        except BoxError as exc:
            box = InvalidBox.because(f"{path}, line {line}: bad box: {exc}")
        if not row["img_path"].strip():  # kept in its row too: reported and skipped when embedded
            box = InvalidBox.because(f"{path}, line {line}: {MISSING_IMAGE}")
        items.append(
            Item(
                id=_int(row["user_img_id"], "user_img_id", path, line),
                image=_image(row["img_path"], path, line) if row["img_path"].strip() else "",
                product_id=_opt_int(row.get("product_id"), "product_id", path, line),
                box=box,
                extra=_extra(row, {*_QUERY_COLUMNS, "product_id"}),
            )
        )
    return items


def read_labelled_csv(
    csv_path: str | os.PathLike[str],
    label: str | None = "product_id",
    image_column: str = "image",
    *,
    skip_missing: bool = False,
    skipped: list[str] | None = None,
    need_label: bool = False,
) -> list[Item]:
    """Read a generic csv with an image column and a label column.

    ``Item.id`` is the row number (from 0). Integer labels become ``product_id``;
    text labels are numbered in sorted order and the text is kept as the title
    (when there is no title column) and in ``extra[label]``. A column named
    ``product_id`` must hold integers (they are the products' ids everywhere else:
    galleries, products.jsonl), so one value that is not is an error naming its
    line, not a reason to number every product anew. ``label=None`` reads
    unlabelled images. ``title`` comes from ``title``/``product_name`` and
    ``category`` from ``category_name`` (or ``category``) when present. A row with no
    image path is an error naming its line, or with ``skip_missing`` (a catalog, not
    training photos) left out with a warning (:func:`_without_missing`) and named in
    ``skipped`` when a list is given; the others keep their ids. With ``need_label`` (training
    photos) an empty label cell is an error naming its line, not an unlabelled photo left out.
    """
    path = Path(csv_path)
    required = (image_column,) if label is None else (image_column, label)
    rows = [(i, line, row) for i, (line, row) in enumerate(_rows(path, required))]  # i: the item's id
    missing: list[int] = []
    header = set(_header(path))
    title_col = next((c for c in ("title", "product_name") if c in header), None)
    category_col = next((c for c in ("category_name", "category") if c in header), None)
    used = {image_column, label, title_col, category_col} - {None}

    if skip_missing:  # left out before their other cells are read
        missing = [line for _, line, row in rows if not row[image_column].strip()]
        rows = [r for r in rows if r[2][image_column].strip()]
    raw_labels = [row[label].strip() for _, _, row in rows] if label else []
    numbering: dict[str, int] | None = None
    if need_label and label:
        for (_, line, _), value in zip(rows, raw_labels):
            if not value:
                raise ProductLensError(f"{path}, line {line}: the {label} cell is empty; every training photo "
                                       "needs its label")
    if label == "product_id":
        for (_, line, _), value in zip(rows, raw_labels):
            _opt_int(value, label, path, line)  # ProductLensError at the first value that is not an integer
    elif label and not all(_is_int(v) for v in raw_labels if v):
        numbering = {v: i for i, v in enumerate(sorted({v for v in raw_labels if v}))}

    items = []
    for k, (i, line, row) in enumerate(rows):
        product_id: int | None = None
        title = row[title_col].strip() if title_col else ""
        extra = _extra(row, used)
        if label:
            value = raw_labels[k]
            if numbering is not None:
                product_id = numbering.get(value)
                extra[label] = value
                title = title or value
            else:
                product_id = _opt_int(value, label, path, line)
        items.append(
            Item(
                id=i,
                image=_image(row[image_column], path, line),
                product_id=product_id,
                title=title,
                category=row[category_col].strip() if category_col else "",
                extra=extra,
            )
        )
    return _without_missing(items, missing, path, skipped)


def read_folder(root: str | os.PathLike[str], *, loose: bool = False) -> list[Item]:
    """Read an ImageFolder tree ``root/<category>/<image>``.

    Categories are numbered in sorted order (``product_id``); ``category`` is the
    folder name. Hidden files and non-image files are skipped.

    Photos in ``root`` itself have no category folder. With ``loose`` (a catalog of
    seller photos) each becomes an item of its own, with no product id, ahead of the
    folders' items; so a flat folder of photos is a catalog too. Without it (a labelled
    set) they cannot be trained on: they are left out with a warning that counts them,
    and a tree with no category folder at all is an error that says so. Folders inside
    the category folders are not read either: a warning names them, and a tree whose
    photos all sit that deep is an error that says so.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ProductLensError(f"{root_path}: not a directory")
    entries = sorted(p for p in root_path.iterdir()
                     if not p.name.startswith(".") and p.name not in IGNORED_FOLDERS and utf8_path(p))
    folders = [p for p in entries if p.is_dir()]
    top = [p for p in entries if p.is_file() and _is_image_name(p.name)]
    items: list[Item] = []
    if loose:
        items += [Item(id=i, image=str(file.resolve())) for i, file in enumerate(top)]
    deeper: list[Path] = []  # folders inside category folders: the layout is one level deep
    others: list[Path] = []  # files that are not photos by their extension
    empty: list[Path] = []  # category folders without a photo: no class, said so
    for class_index, folder in enumerate(folders):
        before = len(items)
        for file in sorted(folder.iterdir()):
            if file.name.startswith(".") or not utf8_path(file):
                continue
            if file.is_dir():
                deeper.append(file)
            elif file.is_file() and not _is_image_name(file.name):
                others.append(file)
            elif file.is_file():
                items.append(
                    Item(
                        id=len(items),
                        image=str(file.resolve()),
                        product_id=class_index,
                        category=folder.name,
                    )
                )
        if len(items) == before:
            empty.append(folder)
    if others:
        log.warning("%d file(s) in the category folders of %s are not photos by their extension and were "
                    "skipped (first %s; photo extensions: %s)", len(others), root_path,
                    others[0].relative_to(root_path), ", ".join(sorted(IMAGE_EXTENSIONS)))
    if empty and items:
        log.warning("%d category folder(s) of %s hold no photo and give no category (first %s)", len(empty),
                    root_path, empty[0].name)
    if deeper:
        nested = (f"{len(deeper)} folder(s) inside the category folders of {root_path} (first "
                  f"{deeper[0].relative_to(root_path)}) are not read: one folder level per category")
        if not items:
            raise ProductLensError(f"{nested}, and no photo sits above them; point at the folder that holds "
                                   "the category folders, or list the photos in a csv")
        log.warning("%s", nested)
    if top and not loose:
        where = f"{len(top)} photo(s) in {root_path} itself (first {top[0].name}) have no category folder"
        if not items:
            raise ProductLensError(f"{where}: a labelled folder holds root/<category>/<image>; "
                                   "move each photo into the folder of its category")
        log.warning("%s: left out", where)
    if not items:
        layout = "photos at its top or in root/<product>/<image>" if loose else "the layout root/<category>/<image>"
        raise ProductLensError(
            f"{root_path}: no images found in {layout} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return items


def read_products_jsonl(path: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Read ``products.jsonl`` into ``{product_id: fields}``; ``shop_image`` made absolute."""
    file = Path(path)
    products: dict[int, dict[str, Any]] = {}
    for line, record in _json_lines(file):
        if "product_id" not in record:
            raise ProductLensError(f"{file}, line {line}: no 'product_id' field")
        pid = _int(record["product_id"], "product_id", file, line)
        if not 0 <= pid < 2 ** 63:  # an item id too: -1 would be padding, 2**63 does not fit
            raise ProductLensError(f"{file}, line {line}: product_id must be from 0 to 2**63 - 1, got {pid}")
        if pid in products:
            raise ProductLensError(f"{file}, line {line}: duplicate product_id {pid}")
        if record.get("shop_image"):
            if not isinstance(record["shop_image"], str):
                raise ProductLensError(f"{file}, line {line}: shop_image must be one path (a string), got "
                                       f"{type(record['shop_image']).__name__} {record['shop_image']!r:.60}")
            record["shop_image"] = _image(record["shop_image"], file, line)
        record["product_id"] = pid
        products[pid] = record
    return products


def read_catalog(path: str | os.PathLike[str], *, skipped: list[str] | None = None) -> list[Item]:
    """Read a catalog, detecting its layout.

    A directory (holding ``gallery.csv``, else ``products.jsonl``, else photos: a
    folder per product, photos of their own at its top, or both), a gallery csv
    (``seller_img_id``), a labelled csv (``image``, labelled by ``product_id`` when
    present) or a ``products.jsonl`` (one item per product's shop image). Rows that name
    no photo are left out with a warning, and one message each is added to ``skipped``
    when a list is given (a command counts them with the photos it could not read).
    """
    p = Path(path)
    if p.is_dir():
        if (p / "gallery.csv").is_file():
            return read_gallery(p / "gallery.csv", skipped=skipped)
        if (p / "products.jsonl").is_file():
            return _products_catalog(p / "products.jsonl", skipped)
        return read_folder(p, loose=True)
    if not p.is_file():
        raise ProductLensError(f"{p}: no such catalog file or directory")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        header = _header(p)
        if "seller_img_id" in header:
            return read_gallery(p, skipped=skipped)
        if "image" in header:
            return read_labelled_csv(p, label="product_id" if "product_id" in header else None, skip_missing=True,
                                     skipped=skipped)
        hint = " (this looks like a queries csv: use read_queries)" if "user_img_id" in header else ""
        raise ProductLensError(
            f"{p}: unknown csv layout{hint}; expected a 'seller_img_id' or an 'image' "
            f"column, found {', '.join(header) or 'no columns'}"
        )
    if suffix == ".jsonl":
        return _products_catalog(p, skipped)
    hint = " (a parquet manifest is read by index build --engine ray)" if suffix == ".parquet" else ""
    raise ProductLensError(
        f"{p}: unknown catalog format; expected a directory, a .csv or a products.jsonl{hint}"
    )


def catalog_ids_given(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`read_catalog` takes the items' ids from ``path`` (a gallery csv's
    ``seller_img_id``, a products.jsonl's ``product_id``) rather than numbering them from 0
    (an ImageFolder tree, an ``image`` csv). Numbered items added to an existing catalog
    need new ids, or they would replace its first items."""
    p = Path(path)
    if p.is_dir():
        return (p / "gallery.csv").is_file() or (p / "products.jsonl").is_file()
    suffix = p.suffix.lower()
    return suffix == ".jsonl" or (suffix == ".csv" and p.is_file() and "seller_img_id" in _header(p))


def _products_catalog(path: Path, skipped: list[str] | None = None) -> list[Item]:
    """One item per product of a products.jsonl, from its shop image."""
    items = []
    missing: list[int] = []
    for pid, record in read_products_jsonl(path).items():
        if not record.get("shop_image"):
            missing.append(pid)
            continue
        extra = {k: v for k, v in record.items()
                 if k not in ("product_id", "shop_image", "title", "category_name")}
        items.append(
            Item(
                id=pid,
                image=record["shop_image"],
                product_id=pid,
                title=str(record.get("title") or record.get("name") or ""),
                category=str(record.get("category_name") or ""),
                extra=extra,
            )
        )
    return _without_missing(items, missing, path, skipped, "product", "no 'shop_image'")


#: the field separators a csv may use: commas, or as spreadsheets in many locales write them, semicolons or tabs
DELIMITERS = (",", ";", "\t")


def _delimiter(f) -> str:
    """The separator of an open csv, from its header line (the one that splits it most; commas on a tie);
    the file is left at its start."""
    first = f.readline()
    f.seek(0)
    counts = {d: first.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # max keeps the first (comma) on a tie
    return best if counts[best] else ","


def _need_file(path: Path, what: str = "csv file") -> None:
    """ProductLensError unless ``path`` is a file: a folder is named as one (it was "not found")."""
    if path.is_dir():
        raise ProductLensError(f"{path}: a folder, where a {what} was expected")
    if not path.is_file():
        raise ProductLensError(f"{path}: {what} not found")


def _header(path: Path) -> list[str]:
    """The column names of a csv (stripped)."""
    _need_file(path)
    with _csv_errors(path), path.open(newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f, delimiter=_delimiter(f)), [])
    return [c.strip() for c in first]


@contextlib.contextmanager
def _csv_errors(path: Path, where: Callable[[], str] = lambda: "") -> Iterator[None]:
    """Bytes that are not UTF-8 text, or that the csv module cannot parse: ProductLensError naming the file."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ProductLensError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
                               "(or UTF-8 with BOM)") from None
    except csv.Error as exc:
        raise ProductLensError(f"{path}{where()}: cannot read it as csv ({exc})") from None


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` of a csv after checking the required columns."""
    _need_file(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        with _csv_errors(path):
            delimiter = _delimiter(f)
        reader = csv.DictReader(f, delimiter=delimiter)
        with _csv_errors(path, lambda: f", line {reader.line_num + 1}"):
            yield from _checked_rows(path, reader, required)


def _checked_rows(path: Path, reader: csv.DictReader, required: tuple[str, ...]
                  ) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows of ``reader`` after checking the required columns (blank lines skipped)."""
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in required if c not in columns]
    if missing:
        raise ProductLensError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"the csv has {', '.join(columns) or 'no columns'}"
        )
    reader.fieldnames = columns
    for row in reader:
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # blank line
        if any((v or "").strip() for v in row.get(None) or ()):  # its values are not where the header says
            raise ProductLensError(f"{path}, line {reader.line_num}: more values than the header's {len(columns)} "
                                   "columns (a value holding the separator needs double quotes)")
        yield reader.line_num, {k: (v or "") for k, v in row.items() if k is not None}


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` of a JSON-lines file, skipping blank lines."""
    _need_file(path, "JSON-lines file")
    with _csv_errors(path), path.open(encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ProductLensError(f"{path}, line {line}: invalid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise ProductLensError(f"{path}, line {line}: expected a JSON object")
            yield line, record


MISSING_IMAGE = "missing image path"


def _without_missing(items: list[Item], missing: list[int], path: Path, skipped: list[str] | None = None,
                     what: str = "line", why: str = MISSING_IMAGE) -> list[Item]:
    """``items`` of a catalog after leaving out the rows in ``missing`` (their lines, or product ids),
    which name no photo: one warning names them (the first ten), as a batch reports the photos it
    cannot decode and goes on, and ``skipped`` (when given) gets a message for each. A catalog
    left with no item at all is an error."""
    if skipped is not None:
        skipped.extend(f"{path}, {what} {m}: {why}" for m in missing)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        plural = "s" if len(missing) > 1 else ""
        message = f"{path}, {what}{plural} {shown}: {why}"
        if not items:
            raise ProductLensError(f"{message}; no item of the catalog is left")
        log.warning("skipped %d item(s): %s", len(missing), message)
    return items


def _image(value: str, manifest: Path, line: int) -> str:
    """Resolve an image path against the manifest's folder; URLs are kept."""
    value = (value or "").strip()
    if not value:
        raise ProductLensError(f"{manifest}, line {line}: {MISSING_IMAGE}")
    if "\x00" in value:
        raise ProductLensError(f"{manifest}, line {line}: the image path holds a NUL byte")
    if value.lower().startswith(_URL_PREFIXES):
        return value
    # absolute and normalised, but links not followed: resolve() followed a link to an existing photo and kept
    # a dangling one as written, so a manifest changed when a missing photo came back (a Ray build's rerun was
    # refused as "another catalog")
    return os.path.normpath(local_file(manifest.absolute().parent, value))


def local_file(folder: Path, name: str) -> Path:
    """``folder / name`` (``~`` expanded), or where that names no file, the first spelling of it that
    does: with ``/`` for Windows' ``\\`` (a manifest written on Windows), or in Unicode's other normal
    form (a name typed in composed form for a file that a Mac stored decomposed, or the reverse)."""
    path = folder / Path(name).expanduser()
    if os.path.lexists(path):
        return path
    for other in dict.fromkeys((name.replace("\\", "/"), *(unicodedata.normalize(form, name.replace("\\", "/"))
                                                       for form in ("NFC", "NFD")))):
        if other != name and os.path.lexists(folder / Path(other).expanduser()):
            return folder / Path(other).expanduser()
    return path


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def image_files(root: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None) -> list[Path]:
    """The image files under the folder ``root`` (recursively, sorted), leaving out hidden files and
    folders, names that are not UTF-8 (:func:`utf8_path`) and anything under ``exclude`` (a command's own
    output folder)."""
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    return sorted(f for f in _walk(root) if _is_image_name(f.name) and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(root).parts) and utf8_path(f)
                  and not (skip is not None and f.resolve().is_relative_to(skip)))


def _walk(root: Path) -> Iterator[Path]:
    """Every file under ``root``, following linked folders (``rglob`` does not follow them on Python
    3.11, so a linked folder of photos was left out unsaid) but entering each real folder once."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or two links to one folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # hidden folders are left out anyway: not entered
        yield from (Path(folder) / name for name in files)


def utf8_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s name can be stored and written out (UTF-8). A name in another encoding (Linux
    keeps its bytes) is reported with a warning, and the caller skips it: its photo, or its category
    folder, could not go into a catalog, a label map or a csv."""
    try:
        os.fspath(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        log.warning("skipped: %s: the name is not valid UTF-8; rename it to include it", shown)
        return False


def _is_int(value: str) -> bool:
    try:
        _parse_int(value)
    except ValueError:
        return False
    return True


_INTEGER = re.compile(r"[+-]?[0-9]+(?:\.0*)?")


def _parse_int(value: Any) -> int:
    """Parse ``3``, ``"3"`` or ``"3.0"`` (as pandas writes integers with gaps); ValueError for anything
    else that Python's ``int``/``float`` would take too (``1e3``, ``1_000``, digits of other scripts)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise ValueError(value)
    return int(text.split(".")[0])


def _int(value: Any, column: str, path: Path, line: int) -> int:
    try:
        return _parse_int(value)
    except (TypeError, ValueError, OverflowError):
        raise ProductLensError(
            f"{path}, line {line}: {column} must be an integer, got {value!r}"
        ) from None


def _opt_int(value: Any, column: str, path: Path, line: int) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _int(value, column, path, line)


def _extra(row: dict[str, str], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}
