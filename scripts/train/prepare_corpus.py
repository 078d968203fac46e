#!/usr/bin/env python3
"""Extract English prose from the Python 3.11 documentation shipped by Debian (python3.11-doc).

The reStructuredText sources under /usr/share/doc/python3.11/html/_sources are turned into plain
paragraphs: directives, comments, tables, indented code blocks and section underlines are
dropped, inline roles (:func:`len`, ``x``, *emphasis*) become their text.  What remains is
documentation prose, one paragraph per line.  The split is by file (every 20th file, in sorted
order, goes to validation) so the validation text is never seen in training.

Licence of the text: the Python documentation is distributed under the PSF License Agreement
(see /usr/share/doc/python3.11-doc/copyright and the docs' license.rst).

Usage: prepare_corpus.py OUT_DIR   (writes OUT_DIR/train.txt and OUT_DIR/valid.txt)
"""

import os
import re
import sys

SOURCES = "/usr/share/doc/python3.11/html/_sources"
ROLE = re.compile(r":[a-zA-Z:+-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
LITERAL = re.compile(r"``([^`]*)``")
LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_+")
REF = re.compile(r"`([^`]*)`_*")
EMPH = re.compile(r"\*\*?([^*\s][^*]*?)\*\*?")
UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{3,}\s*$")


def clean_inline(text):
    text = ROLE.sub(r"\1", text)
    text = LITERAL.sub(r"\1", text)
    text = LINK.sub(r"\1", text)
    text = REF.sub(r"\1", text)
    text = EMPH.sub(r"\1", text)
    text = text.replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


CODE_DIRECTIVES = ("code-block", "sourcecode", "doctest", "testcode", "testoutput",
                   "productionlist", "literalinclude", "highlight", "csv-table", "table",
                   "list-table", "raw", "toctree", "index", "moduleauthor", "sectionauthor")


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def paragraphs(path):
    """Yields the prose paragraphs of one .rst.txt file.

    Paragraphs may be indented (function and class descriptions live inside directive bodies),
    but literal blocks (after a paragraph ending in '::') and the bodies of code-like directives
    are skipped up to the next line indented no deeper than the line that introduced them.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().expandtabs(8).split("\n")
    block = []
    skip_deeper_than = None  # while set, lines indented deeper than this are code
    for line in lines + [""]:
        stripped = line.strip()
        if skip_deeper_than is not None:
            if not stripped or indent_of(line) > skip_deeper_than:
                continue
            skip_deeper_than = None
        if stripped and not stripped.startswith(".."):
            if UNDERLINE.match(stripped) or stripped.startswith(("|", "+-", "=", ">>>", ":")):
                block = []
                continue
            block.append(stripped)
            if stripped.endswith("::"):
                skip_deeper_than = indent_of(line)
                yield from finish(block)
                block = []
            continue
        if stripped.startswith(".."):
            directive = stripped[2:].split("::")[0].strip()
            if directive in CODE_DIRECTIVES or "::" not in stripped:
                skip_deeper_than = indent_of(line)  # comments and code bodies
        yield from finish(block)
        block = []


def finish(block):
    if not block:
        return
    text = clean_inline(" ".join(block))
    if text.endswith("::"):
        text = text[:-1]
    words = text.split()
    letters = sum(c.isalpha() or c == " " for c in text)
    # Prose: several words, mostly letters, ends like a sentence.
    if len(words) >= 6 and letters >= 0.8 * len(text) and text[-1] in ".:?!)":
        yield text


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(SOURCES) for f in fs if f.endswith(".rst.txt"))
    if not files:
        sys.exit(f"no .rst.txt files under {SOURCES}: apt-get install python3.11-doc")
    counts = {"train": 0, "valid": 0}
    with open(os.path.join(out, "train.txt"), "w") as train, \
            open(os.path.join(out, "valid.txt"), "w") as valid:
        for i, path in enumerate(files):
            split = "valid" if i % 20 == 7 else "train"
            for p in paragraphs(path):
                (valid if split == "valid" else train).write(p + "\n")
                counts[split] += len(p) + 1
    print(f"{len(files)} files -> train {counts['train']/1e6:.2f} MB, "
          f"valid {counts['valid']/1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
