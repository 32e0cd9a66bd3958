#!/usr/bin/env python3
"""Fails when files of one crate import each other in a circle.

Each `.rs` file under a crate's `src/` is a module. A file depends on another
when it names it through `crate::a::b`, `super::x` or `self::x` paths (in `use`
lines or inline). `#[cfg(test)] mod tests` blocks and a file's own child
modules are not dependencies back on their parent. Prints every cycle found
and exits 1; exits 0 when the files of every crate form a DAG.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_path(src: Path, file: Path) -> tuple:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def rewrite_blocks(text: str, opening: str, body) -> str:
    """Replaces the body of each brace block opened by regex `opening` with
    `body(original_body)` (brace-matched, so nested blocks stay whole)."""
    out, i = [], 0
    pattern = re.compile(opening)
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out.append(text[i : m.end()])
        out.append(body(text[m.end() : j]))
        i = j


def strip_tests(text: str) -> str:
    """Empties `#[cfg(test)] mod x { ... }` blocks: tests may use anything."""
    return rewrite_blocks(text, r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", lambda b: "}")


def inline_modules_as_self(text: str) -> str:
    """Inside an inline `mod x { ... }`, `super::` is this file: say `self::`."""
    return rewrite_blocks(text, r"\bmod\s+\w+\s*\{", lambda b: b.replace("super::", "self::"))


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def root_reexports(text: str) -> dict:
    """Names the crate root re-exports (`pub use a::b::{X, Y}`) -> module path."""
    out = {}
    for m in re.finditer(r"pub use\s+((?:\w+::)+)(\{[^}]*\}|\w+)(?:\s+as\s+(\w+))?", text):
        path = tuple(p for p in m.group(1).split("::") if p)
        if path and path[0] in ("crate", "self"):
            path = path[1:]
        items = m.group(2).strip("{}").split(",")
        for item in items:
            item = item.strip()
            if not item:
                continue
            alias = item.split(" as ")[-1].strip()
            out[m.group(3) or alias] = path
    return out


def referenced(text: str, me: tuple, modules: set, reexports: dict, macros: dict) -> set:
    deps = set()
    # Relative paths to my own child modules (`use worker::Msg`).
    for mod in modules:
        if len(mod) == len(me) + 1 and mod[: len(me)] == me:
            if re.search(r"(?<![:\w])" + mod[-1] + r"::", text):
                deps.add(mod)

    def item_of(path: tuple, item: str):
        """The module that `path::item` depends on (None: another crate)."""
        if path + (item,) in modules:
            return path + (item,)
        if path == ():
            if item in macros:
                return macros[item]
            if item in reexports:
                target = reexports[item]
                return target if target in modules else None
        return path

    for m in re.finditer(r"(?<![\w$(])(crate|super|self)((?:::\w+)*)(::\{[^}]*\})?", text):
        base = m.group(1)
        rest = [p for p in m.group(2).split("::") if p]
        start = {"crate": (), "super": me[:-1], "self": me}[base]
        path = start
        while rest and path + (rest[0],) in modules:
            path = path + (rest.pop(0),)
        if m.group(3):
            for item in m.group(3)[3:-1].split(","):
                item = item.strip().split("::")[0].split(" ")[0]
                if item and item != "self":
                    deps.add(item_of(path, item))
                elif item == "self":
                    deps.add(path)
        elif rest:
            deps.add(item_of(path, rest[0]))
        else:
            deps.add(path)
    deps.discard(None)
    deps.discard(me)
    return deps


def exported_macros(files: dict) -> dict:
    """`#[macro_export]` macros live at the crate root by name; map each to its file."""
    out = {}
    for mod, f in files.items():
        for m in re.finditer(r"#\[macro_export\]\s*macro_rules!\s*(\w+)", f.read_text()):
            out[m.group(1)] = mod
    return out


def crate_cycles(src: Path) -> list:
    files = {module_path(src, f): f for f in src.rglob("*.rs")}
    modules = set(files)
    root = files.get(())
    reexports = root_reexports(strip_comments(root.read_text())) if root else {}
    macros = exported_macros(files)
    graph = {}
    for mod, f in files.items():
        text = inline_modules_as_self(strip_comments(strip_tests(f.read_text())))
        graph[mod] = referenced(text, mod, modules, reexports, macros)
    cycles, color, stack = [], {}, []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            # A parent naming its own child (`mod x; use x::Y`) is the
            # normal direction; the child naming the parent back closes a
            # circle, which the search finds from the child.
            if color.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in color:
                visit(d)
        stack.pop()
        color[n] = 2

    for n in sorted(graph):
        if n not in color:
            visit(n)
    return cycles


def name(mod: tuple) -> str:
    return "::".join(mod) or "crate"


def main() -> int:
    srcs = [ROOT / "src"] + sorted(p / "src" for p in (ROOT / "crates").iterdir())
    bad = 0
    for src in srcs:
        if not src.is_dir():
            continue
        for cycle in crate_cycles(src):
            bad += 1
            print(f"{src.relative_to(ROOT)}: import circle: " + " -> ".join(map(name, cycle)))
    if bad:
        print(f"{bad} import circle(s): move the shared items into a module both can import")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
