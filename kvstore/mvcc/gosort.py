"""Go 1.16's ``sort.Sort`` (unstable quicksort), reimplemented.

etcd sorts range results with ``sort.Sort``, which is not stable: the order of
elements with equal sort keys (same version, same create revision, ...) depends
on the exact algorithm. Matching etcd's output byte for byte therefore needs
the same algorithm: Bentley-McIlroy quicksort with ninther pivots, a
duplicate-protection pass, heapsort past the depth limit, and a gap-6 shell
pass + insertion sort for slices of 12 or fewer elements.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Data:
    __slots__ = ("desc", "items", "keys")

    def __init__(self, items: list[Any], keys: list[Any], desc: bool) -> None:
        self.items = items
        self.keys = keys
        self.desc = desc

    def less(self, i: int, j: int) -> bool:
        k = self.keys
        if self.desc:  # sort.Reverse swaps the arguments of Less
            return bool(k[j] < k[i])
        return bool(k[i] < k[j])

    def swap(self, i: int, j: int) -> None:
        k, it = self.keys, self.items
        k[i], k[j] = k[j], k[i]
        it[i], it[j] = it[j], it[i]


def _insertion_sort(d: _Data, a: int, b: int) -> None:
    for i in range(a + 1, b):
        j = i
        while j > a and d.less(j, j - 1):
            d.swap(j, j - 1)
            j -= 1


def _sift_down(d: _Data, lo: int, hi: int, first: int) -> None:
    root = lo
    while True:
        child = 2 * root + 1
        if child >= hi:
            return
        if child + 1 < hi and d.less(first + child, first + child + 1):
            child += 1
        if not d.less(first + root, first + child):
            return
        d.swap(first + root, first + child)
        root = child


def _heap_sort(d: _Data, a: int, b: int) -> None:
    first, hi = a, b - a
    for i in range((hi - 1) // 2, -1, -1):
        _sift_down(d, i, hi, first)
    for i in range(hi - 1, -1, -1):
        d.swap(first, first + i)
        _sift_down(d, 0, i, first)


def _median_of_three(d: _Data, m1: int, m0: int, m2: int) -> None:
    if d.less(m1, m0):
        d.swap(m1, m0)
    if d.less(m2, m1):
        d.swap(m2, m1)
        if d.less(m1, m0):
            d.swap(m1, m0)


def _do_pivot(d: _Data, lo: int, hi: int) -> tuple[int, int]:
    m = (lo + hi) >> 1
    if hi - lo > 40:
        s = (hi - lo) // 8
        _median_of_three(d, lo, lo + s, lo + 2 * s)
        _median_of_three(d, m, m - s, m + s)
        _median_of_three(d, hi - 1, hi - 1 - s, hi - 1 - 2 * s)
    _median_of_three(d, lo, m, hi - 1)

    pivot = lo
    a, c = lo + 1, hi - 1
    while a < c and d.less(a, pivot):
        a += 1
    b = a
    while True:
        while b < c and not d.less(pivot, b):
            b += 1
        while b < c and d.less(pivot, c - 1):
            c -= 1
        if b >= c:
            break
        d.swap(b, c - 1)
        b += 1
        c -= 1
    protect = hi - c < 5
    if not protect and hi - c < (hi - lo) // 4:
        dups = 0
        if not d.less(pivot, hi - 1):
            d.swap(c, hi - 1)
            c += 1
            dups += 1
        if not d.less(b - 1, pivot):
            b -= 1
            dups += 1
        if not d.less(m, pivot):
            d.swap(m, b - 1)
            b -= 1
            dups += 1
        protect = dups > 1
    if protect:
        while True:
            while a < b and not d.less(b - 1, pivot):
                b -= 1
            while a < b and d.less(a, pivot):
                a += 1
            if a >= b:
                break
            d.swap(a, b - 1)
            a += 1
            b -= 1
    d.swap(pivot, b - 1)
    return b - 1, c


def _quick_sort(d: _Data, a: int, b: int, max_depth: int) -> None:
    while b - a > 12:
        if max_depth == 0:
            _heap_sort(d, a, b)
            return
        max_depth -= 1
        mlo, mhi = _do_pivot(d, a, b)
        if mlo - a < b - mhi:
            _quick_sort(d, a, mlo, max_depth)
            a = mhi
        else:
            _quick_sort(d, mhi, b, max_depth)
            b = mlo
    if b - a > 1:
        for i in range(a + 6, b):
            if d.less(i, i - 6):
                d.swap(i, i - 6)
        _insertion_sort(d, a, b)


def go_sort(items: list[T], key: Callable[[T], Any], *, descending: bool = False) -> None:
    """Sort ``items`` in place exactly as Go 1.16 ``sort.Sort`` (or ``sort.Reverse``) would."""
    n = len(items)
    depth = 0
    i = n
    while i > 0:
        depth += 1
        i >>= 1
    d = _Data(items, [key(x) for x in items], descending)
    _quick_sort(d, 0, n, depth * 2)
