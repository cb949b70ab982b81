#!/usr/bin/env python3
"""Import circles among flashgate's modules (python3, standard library only).

Reads src/**/*.rs, collects every module path a file names -- `use crate::…`,
`use super::…`, `use self::…`, a child module's name (`keys::meta`), and
`crate::…::` / `super::…::` paths in code -- and builds the dependency graph
at two granularities:

  * top-level modules (`src/foo.rs`, `src/foo/` = `foo`);
  * the same with each module named by --split (default: inventory) cut into
    its files (`src/inventory/keys.rs` = `inventory::keys`; its `mod.rs` =
    `inventory`).

A name that a folder's mod.rs imports from one of its files (`pub use
keys::ShardKeys`, or a private `use`) resolves to that file, so `super::X` and
`crate::inventory::X` point at the file that defines X, not at the facade. A
`pub use` alone is a re-export, not a dependency of mod.rs. `#[cfg(test)]`
modules are skipped unless --include-tests. `src/main.rs` (the binary) and
`src/lib.rs` (the root) are not nodes.

A cut file's arrows to its own folder's mod.rs are left out of the second
graph (--parents counts them): `inventory/`'s files each hold an `impl
Inventory` block of one rule and name `super::Inventory`, while mod.rs calls
into them -- one type whose methods are grouped by file, not a circle between
rules (docs/design.md, "Layout"). Arrows between sibling files, and from
mod.rs to a file, still count.

Prints each cycle (strongly connected component, with the references that
make each of its edges) and exits 1 if there is any, 0 otherwise.

    python3 scripts/module_cycles.py            # or: make cycles
    python3 scripts/module_cycles.py --split inventory --split http
"""

import argparse
import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blank out comments, string and char literals, keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 260]) if c in "rb" else None
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == "'":
            # a char literal ('a', '\n', '\u{1F600}') or a lifetime ('a)
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def blank_test_modules(text):
    """Blank `#[cfg(test)] mod x { … }` blocks (keeping line breaks)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", text)
        if not m:
            return text
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        text = text[:m.start()] + "\n" * text.count("\n", m.start(), j) + text[j:]


def expand_use_tree(tree):
    """`a::{b, c::{d, e as f}, *}` -> [[a,b], [a,c,d], [a,c,e], [a,*]] (aliases dropped)."""
    tree = re.sub(r"\s+", "", tree)

    def parse(s, i, prefix):
        paths, seg = [], ""
        while i < len(s):
            ch = s[i]
            if s.startswith("::", i):
                prefix = prefix + [seg] if seg else prefix
                seg, i = "", i + 2
                if i < len(s) and s[i] == "{":
                    sub, i = parse_group(s, i + 1, prefix)
                    paths.extend(sub)
                    return paths, i
                continue
            if ch in ",}":
                break
            seg += ch
            i += 1
        if seg:
            paths.append(prefix + [seg])
        return paths, i

    def parse_group(s, i, prefix):
        paths = []
        while i < len(s) and s[i] != "}":
            sub, i = parse(s, i, prefix)
            paths.extend(sub)
            if i < len(s) and s[i] == ",":
                i += 1
        return paths, i + 1

    if tree.startswith("{"):
        paths, _ = parse_group(tree, 1, [])
    else:
        paths, _ = parse(tree, 0, [])
    return paths


def use_tree_segments(raw):
    """Split a raw use tree (whitespace kept) and drop `as alias` parts."""
    raw = re.sub(r"\s+as\s+" + IDENT, "", raw)
    return expand_use_tree(raw)


class Crate:
    def __init__(self, src, split, include_tests):
        self.src = src
        self.split = set(split)
        self.files = {}  # module path tuple -> file
        for root, _, names in os.walk(src):
            for name in sorted(names):
                if not name.endswith(".rs"):
                    continue
                path = os.path.join(root, name)
                rel = os.path.relpath(path, src)[:-3].split(os.sep)
                if rel in (["main"], ["lib"]):
                    continue
                if rel[-1] == "mod":
                    rel = rel[:-1]
                self.files[tuple(rel)] = path
        self.text = {}
        for mod, path in self.files.items():
            with open(path, encoding="utf-8") as f:
                t = strip_comments_and_strings(f.read())
            self.text[mod] = t if include_tests else blank_test_modules(t)
        self.children = defaultdict(set)
        for mod in self.files:
            if len(mod) > 1:
                self.children[mod[:-1]].add(mod[-1])
        # names a folder's mod.rs imports from its own files: name -> child
        self.imported = defaultdict(dict)
        for mod in self.files:
            if not self.children.get(mod):
                continue
            for _, _, paths in self.use_statements(mod):
                for p in paths:
                    p = self.absolute(mod, p)
                    if p and len(p) > len(mod) + 1 and tuple(p[:len(mod)]) == mod \
                            and p[len(mod)] in self.children[mod]:
                        child = p[len(mod)]
                        if p[-1] == "*":
                            for item in self.pub_items(mod + (child,)):
                                self.imported[mod].setdefault(item, child)
                        else:
                            self.imported[mod][p[-1]] = child

    def pub_items(self, mod):
        t = self.text.get(mod, "")
        return set(re.findall(r"\bpub(?:\([^)]*\))?\s+(?:async\s+)?(?:fn|struct|enum|const|static|type|trait|mod)\s+(" + IDENT + ")", t))

    def use_statements(self, mod):
        """(line, is_pub, [path segments]) for every `use` in the file."""
        t = self.text[mod]
        for m in re.finditer(r"(^|[;{}\]]\s*)(pub(\([^)]*\))?\s+)?use\s+([^;]+);", t, re.M):
            line = t.count("\n", 0, m.start(4)) + 1
            yield line, bool(m.group(2)), use_tree_segments(m.group(4))

    def absolute(self, mod, segs):
        """A path as written in `mod` -> a path from the crate root, or None
        for an external crate / std."""
        segs = [s for s in segs if s]
        if not segs:
            return None
        if segs[0] == "crate":
            return segs[1:]
        if segs[0] in ("self", "super"):
            base = list(mod)
            while segs and segs[0] in ("self", "super"):
                if segs[0] == "super":
                    if not base:
                        return None
                    base.pop()
                segs = segs[1:]
            return base + segs
        if segs[0] in self.children.get(mod, ()):
            return list(mod) + segs
        return None

    def node(self, path, fine):
        """The graph node a crate-absolute path lands in."""
        if not path or (path[0],) not in self.files:
            return None
        top = path[0]
        if not fine or top not in self.split or len(path) < 2:
            return top
        mod = (top,)
        nxt = path[1]
        if nxt in self.children.get(mod, ()):
            return top + "::" + nxt
        if nxt in self.imported.get(mod, {}):
            return top + "::" + self.imported[mod][nxt]
        return top

    def own_node(self, mod, fine):
        if fine and mod[0] in self.split and len(mod) > 1:
            return mod[0] + "::" + mod[1]
        return mod[0]

    def graph(self, fine, parents=False):
        """The arrows (a, b) -> [file:line]. With `fine`, an arrow from a cut
        module's file to its own folder's mod.rs (`super::Inventory` in an
        `impl Inventory` block) is a parent arrow: left out unless `parents`,
        and counted in `self.parent_arrows`."""
        edges = defaultdict(list)  # (a, b) -> [file:line]
        self.parent_arrows = defaultdict(list)
        for mod, t in self.text.items():
            me = self.own_node(mod, fine)
            where = os.path.relpath(self.files[mod])
            refs = []
            use_spans = []
            for m in re.finditer(r"(^|[;{}\]]\s*)(pub(\([^)]*\))?\s+)?use\s+([^;]+);", t, re.M):
                use_spans.append((m.start(4), m.end(4)))
                line = t.count("\n", 0, m.start(4)) + 1
                is_facade = bool(m.group(2)) and bool(self.children.get(mod))
                for p in use_tree_segments(m.group(4)):
                    a = self.absolute(mod, p)
                    if a and not (is_facade and len(a) > len(mod) and tuple(a[:len(mod)]) == mod):
                        refs.append((line, a))
            # paths in code: crate::a::b, super::x, a child module's name
            children = self.children.get(mod, set())
            heads = ["crate", "super", "self"] + sorted(children)
            pat = r"(?<![A-Za-z0-9_:$])((?:" + "|".join(map(re.escape, heads)) + r")(?:::" + IDENT + r")+)"
            for m in re.finditer(pat, t):
                if any(s <= m.start() < e for s, e in use_spans):
                    continue
                line = t.count("\n", 0, m.start()) + 1
                a = self.absolute(mod, m.group(1).split("::"))
                if a:
                    refs.append((line, a))
            for line, a in refs:
                other = self.node(a, fine)
                ref = f"{where}:{line}"
                if not other or other == me:
                    continue
                to_parent = fine and not parents and me.startswith(other + "::")
                into = self.parent_arrows if to_parent else edges
                if ref not in into[(me, other)]:
                    into[(me, other)].append(ref)
        return edges


def sccs(nodes, succ):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def shortest_cycle(start, comp, succ):
    """A shortest cycle through `start` inside `comp` (BFS)."""
    prev, frontier, seen = {}, [start], {start}
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(succ.get(v, ())):
                if w not in comp:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return None


def report(title, edges):
    succ = defaultdict(set)
    nodes = set()
    for a, b in edges:
        succ[a].add(b)
        nodes.update((a, b))
    comps = sccs(nodes, succ)
    print(f"== {title}: {len(nodes)} modules, {len(edges)} arrows, "
          f"{len(comps)} cycle{'s' if len(comps) != 1 else ''}")
    for comp in comps:
        members = set(comp)
        print(f"cycle among {{{', '.join(comp)}}}")
        shown = set()
        for v in comp:
            c = shortest_cycle(v, members, succ)
            if c and frozenset(c) not in shown:
                shown.add(frozenset(c))
                print("  " + " -> ".join(c))
        for a in comp:
            for b in sorted(succ[a] & members):
                refs = edges[(a, b)]
                more = f" (+{len(refs) - 2} more)" if len(refs) > 2 else ""
                print(f"    {a} -> {b}: {', '.join(refs[:2])}{more}")
    return len(comps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    ap.add_argument("--split", action="append", metavar="MODULE",
                    help="a folder module to cut into its files (default: inventory; repeatable)")
    ap.add_argument("--include-tests", action="store_true", help="also read #[cfg(test)] modules")
    ap.add_argument("--parents", action="store_true",
                    help="count a cut file's arrows to its own mod.rs as arrows (they are left out by default)")
    args = ap.parse_args()
    split = args.split or ["inventory"]
    crate = Crate(os.path.normpath(args.src), split, args.include_tests)
    n = report("top-level modules", crate.graph(fine=False))
    n += report(f"with {', '.join(m + '/*' for m in split)} cut into files", crate.graph(fine=True, parents=args.parents))
    if crate.parent_arrows:
        print(f"(left out: {len(crate.parent_arrows)} arrows from a file to its own mod.rs, "
              "the files of one type's impl blocks naming it; --parents counts them)")
    if n:
        print(f"{n} cycle(s) found", file=sys.stderr)
        return 1
    print("no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
