from concurrent.futures import ThreadPoolExecutor

from mriseg.app.cache import LRUCache


def test_least_recently_used_goes_first():
    cache = LRUCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2


def test_bounded_under_concurrent_use():
    cache = LRUCache(max_entries=5)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cache.put(i, i), range(1000)))
    assert len(cache) == 5


def test_byte_budget_evicts_oldest_but_keeps_the_newest():
    cache = LRUCache(max_entries=10, max_bytes=100, size_of=len)
    cache.put("a", b"x" * 60)
    cache.put("b", b"x" * 30)
    assert cache.bytes == 90
    cache.put("c", b"x" * 30)  # 120 > 100: "a" goes
    assert cache.get("a") is None and cache.bytes == 60
    cache.put("d", b"x" * 500)  # over budget alone: kept, everything else evicted
    assert cache.get("d") is not None and len(cache) == 1 and cache.bytes == 500
    cache.put("d", b"x" * 10)  # replacing a key updates its size
    assert cache.bytes == 10
